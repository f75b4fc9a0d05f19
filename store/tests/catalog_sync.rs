//! Reconciling the catalog with a Bitbucket server's listing, against a
//! real PostgreSQL: new, renamed, moved (and swapped), deleted, restored
//! and adopted repositories; the clone credential handed out for the
//! server's origin only.

use leakscan_store::{
    catalog, catalog_sync,
    catalog_sync::{Reconciled, RemoteRepository},
    clone_credentials,
    jobs::{self, JobScope},
    secrets::{MasterKey, SecretBox},
    testing::TestDatabase,
};
use sqlx::PgPool;

fn remote(id: i64, project: &str, slug: &str) -> RemoteRepository {
    RemoteRepository {
        external_id: id,
        project_key: project.into(),
        project_name: format!("{project} name"),
        slug: slug.into(),
        name: slug.to_uppercase(),
        clone_url: format!("https://bitbucket.example.com/scm/{project}/{slug}.git"),
        problem: None,
    }
}

async fn source(pool: &PgPool) -> (SecretBox, i32) {
    let secrets = SecretBox::load(pool, MasterKey::generate()).await.unwrap();
    let id = catalog_sync::register_source(
        pool,
        &secrets,
        "https://bitbucket.example.com",
        "https://bitbucket.example.com",
        "x-token-auth:BBDC-token%2Fwith%2Bsigns",
    )
    .await
    .unwrap();
    (secrets, id)
}

/// `PROJECT/slug` of every repository with its flags, sorted.
async fn catalog_of(pool: &PgPool) -> Vec<String> {
    let mut names: Vec<String> = catalog::repositories_in(pool, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            format!(
                "{}/{} {}{}",
                r.project_key,
                r.slug,
                r.name,
                if r.deleted { " deleted" } else { "" }
            )
        })
        .collect();
    names.sort();
    names
}

fn changes(result: &Reconciled) -> Vec<String> {
    let mut list: Vec<String> = result
        .changes
        .iter()
        .map(|c| match &c.was {
            Some(was) => format!("{} {} <- {was}", c.change, c.repository),
            None => format!("{} {}", c.change, c.repository),
        })
        .collect();
    list.sort();
    list
}

#[tokio::test]
async fn renames_moves_swaps_deletions_and_returns_are_reconciled_by_bitbuckets_id() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let (_secrets, id) = source(pool).await;

    let first = catalog_sync::reconcile(
        pool,
        id,
        &[
            remote(1, "PROJ", "app"),
            remote(2, "PROJ", "lib"),
            remote(3, "OTHER", "tools"),
            remote(4, "~alice", "notes"),
        ],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(first.added, 4);
    assert_eq!(first.live.len(), 4);
    assert_eq!(
        catalog_of(pool).await,
        [
            "OTHER/tools TOOLS",
            "PROJ/app APP",
            "PROJ/lib LIB",
            "~alice/notes NOTES"
        ]
    );
    let app = catalog::find_repository(pool, "PROJ", "app")
        .await
        .unwrap()
        .unwrap();
    let project = catalog::find_project(pool, "PROJ").await.unwrap().unwrap();
    assert_eq!(project.name, "PROJ name", "the server's project name");

    // Same listing again: nothing changes.
    let again = catalog_sync::reconcile(
        pool,
        id,
        &[
            remote(1, "PROJ", "app"),
            remote(2, "PROJ", "lib"),
            remote(3, "OTHER", "tools"),
            remote(4, "~alice", "notes"),
        ],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(again.unchanged, 4);
    assert!(again.changes.is_empty(), "{:?}", again.changes);

    // app and lib swap names, tools moves to PROJ, notes is deleted.
    let swapped = catalog_sync::reconcile(
        pool,
        id,
        &[
            remote(1, "PROJ", "lib"),
            remote(2, "PROJ", "app"),
            remote(3, "PROJ", "tools"),
        ],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(
        changes(&swapped),
        [
            "deleted ~alice/notes",
            "moved PROJ/tools <- OTHER/tools",
            "renamed PROJ/app <- PROJ/lib",
            "renamed PROJ/lib <- PROJ/app",
        ]
    );
    let renamed = catalog::find_repository(pool, "PROJ", "lib")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.id, app.id, "Bitbucket's id keeps the repository");
    assert_eq!(
        catalog_of(pool).await,
        [
            "PROJ/app APP",
            "PROJ/lib LIB",
            "PROJ/tools TOOLS",
            "~alice/notes NOTES deleted"
        ]
    );

    // A deleted repository is not scanned.
    let notes = catalog::find_repository(pool, "~alice", "notes")
        .await
        .unwrap()
        .unwrap();
    catalog::replace_branches(pool, notes.id, &[("main".into(), "1".repeat(40))])
        .await
        .unwrap();
    let job = jobs::create_job(pool, &JobScope::Total, "admin", &[])
        .await
        .unwrap();
    jobs::expand_job(pool, job.id).await.unwrap();
    let repositories: Vec<i64> =
        sqlx::query_scalar("select distinct repository_id from scan_tasks where job_id = $1")
            .bind(job.id)
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(!repositories.contains(&notes.id.0), "{repositories:?}");

    // It comes back; a new repository takes the slug a deleted one had.
    let back = catalog_sync::reconcile(
        pool,
        id,
        &[
            remote(1, "PROJ", "lib"),
            remote(2, "PROJ", "app"),
            remote(3, "PROJ", "tools"),
            remote(4, "~alice", "notes"),
        ],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(changes(&back), ["restored ~alice/notes"]);
    let reused = catalog_sync::reconcile(
        pool,
        id,
        &[
            remote(1, "PROJ", "lib"),
            remote(2, "PROJ", "app"),
            remote(4, "~alice", "notes"),
            remote(9, "PROJ", "tools"),
        ],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(
        changes(&reused),
        ["added PROJ/tools", "deleted PROJ/tools"],
        "the old tools is deleted, a new one has its name"
    );
    let all = catalog_of(pool).await;
    assert_eq!(
        all.iter().filter(|name| name.contains("deleted")).count(),
        1,
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|name| name.starts_with("PROJ/tools.deleted-")),
        "{all:?}"
    );
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_repository_registered_otherwise_is_adopted_and_a_skipped_one_is_not_deleted() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let (_secrets, id) = source(pool).await;
    // Found under a root before Bitbucket was configured.
    catalog::upsert_project(pool, "PROJ", "PROJ").await.unwrap();
    let local = catalog::upsert_repository(pool, "PROJ", "app", "/srv/git/PROJ/app.git")
        .await
        .unwrap();
    let mut unusable = remote(2, "PROJ", "mirror");
    unusable.problem = Some("no http(s) clone link".into());
    let first = catalog_sync::reconcile(
        pool,
        id,
        &[
            remote(1, "PROJ", "app"),
            unusable.clone(),
            remote(3, "BAD KEY", "x"),
        ],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(changes(&first), ["adopted PROJ/app"]);
    assert_eq!(first.skipped.len(), 2, "{:?}", first.skipped);
    assert!(first
        .skipped
        .iter()
        .any(|s| s.contains("no http(s) clone link")));
    assert!(first
        .skipped
        .iter()
        .any(|s| s.contains("invalid project key")));
    let adopted = catalog::find_repository(pool, "PROJ", "app")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(adopted.id, local.id);
    assert_eq!(
        adopted.clone_url,
        "https://bitbucket.example.com/scm/PROJ/app.git"
    );

    // The mirror, once taken, stays while the server lists it unusable.
    catalog_sync::reconcile(
        pool,
        id,
        &[remote(1, "PROJ", "app"), remote(2, "PROJ", "mirror")],
        "test",
    )
    .await
    .unwrap();
    let later = catalog_sync::reconcile(pool, id, &[remote(1, "PROJ", "app"), unusable], "test")
        .await
        .unwrap();
    assert_eq!(later.deleted, 0, "{:?}", later.changes);
    assert!(
        !catalog::find_repository(pool, "PROJ", "mirror")
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_servers_token_is_handed_out_for_its_own_origin_only() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let (secrets, id) = source(pool).await;
    catalog_sync::reconcile(pool, id, &[remote(1, "PROJ", "app")], "test")
        .await
        .unwrap();
    let synced = catalog::find_repository(pool, "PROJ", "app")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        clone_credentials::git_line(pool, &secrets, synced.id, &synced.clone_url)
            .await
            .unwrap()
            .as_deref(),
        Some("https://x-token-auth:BBDC-token%2Fwith%2Bsigns@bitbucket.example.com")
    );
    // Another host, and a repository not from the server, get nothing.
    assert_eq!(
        clone_credentials::git_line(pool, &secrets, synced.id, "https://elsewhere.example/r.git")
            .await
            .unwrap(),
        None
    );
    catalog::upsert_project(pool, "OWN", "OWN").await.unwrap();
    let own = catalog::upsert_repository(
        pool,
        "OWN",
        "r",
        "https://bitbucket.example.com/scm/OWN/r.git",
    )
    .await
    .unwrap();
    assert_eq!(
        clone_credentials::git_line(pool, &secrets, own.id, &own.clone_url)
            .await
            .unwrap(),
        None
    );
    database.drop_database().await.unwrap();
}

/// Regression (review of issue 18): a move that is skipped kept its place
/// out of the plan, and a deleted repository listed again but not taken
/// was invisible to it, so a new repository was inserted at a held place:
/// the unique constraint failed and every later sync with it.
#[tokio::test]
async fn a_skipped_move_and_a_deleted_repository_keep_their_places() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let (_secrets, id) = source(pool).await;
    catalog_sync::reconcile(
        pool,
        id,
        &[remote(1, "PROJ", "a"), remote(2, "PROJ", "c")],
        "test",
    )
    .await
    .unwrap();
    // PROJ/b belongs to a repository found under a root.
    catalog::upsert_repository(pool, "PROJ", "b", "/srv/git/PROJ/b.git")
        .await
        .unwrap();
    // 1 is renamed to b (held: the move is skipped) and a new 3 takes a.
    let result = catalog_sync::reconcile(
        pool,
        id,
        &[
            remote(1, "PROJ", "b"),
            remote(3, "PROJ", "a"),
            remote(2, "PROJ", "c"),
        ],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(result.added, 0, "{:?}", result.changes);
    assert_eq!(result.skipped.len(), 2, "{:?}", result.skipped);
    assert_eq!(catalog_of(pool).await, ["PROJ/a A", "PROJ/b b", "PROJ/c C"]);

    // 2 is deleted, then listed again but cannot be taken, while a new 4
    // is at its place: the deleted one moves aside.
    catalog_sync::reconcile(pool, id, &[remote(1, "PROJ", "a")], "test")
        .await
        .unwrap();
    let mut unusable = remote(2, "PROJ", "c");
    unusable.problem = Some("state OFFLINE".into());
    let result = catalog_sync::reconcile(
        pool,
        id,
        &[remote(1, "PROJ", "a"), unusable, remote(4, "PROJ", "c")],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(changes(&result), ["added PROJ/c"]);
    let all = catalog_of(pool).await;
    assert!(all.contains(&"PROJ/c C".to_string()), "{all:?}");
    assert!(
        all.iter()
            .any(|name| name.starts_with("PROJ/c.deleted-") && name.ends_with("deleted")),
        "{all:?}"
    );
    database.drop_database().await.unwrap();
}

/// Regression (second review of issue 18): a deleted repository whose own
/// move was skipped counted as giving its place up while moves were
/// planned, so another move was planned into the place it keeps.
#[tokio::test]
async fn a_deleted_repository_whose_move_is_skipped_keeps_its_place() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let (_secrets, id) = source(pool).await;
    catalog_sync::reconcile(
        pool,
        id,
        &[remote(1, "PROJ", "a"), remote(2, "PROJ", "c")],
        "test",
    )
    .await
    .unwrap();
    // 1 is dropped (deleted at PROJ/a); PROJ/b belongs to a root repository.
    catalog_sync::reconcile(pool, id, &[remote(2, "PROJ", "c")], "test")
        .await
        .unwrap();
    catalog::upsert_repository(pool, "PROJ", "b", "/srv/git/PROJ/b.git")
        .await
        .unwrap();
    // 1 comes back renamed to the held b; 2 is renamed to a.
    let result = catalog_sync::reconcile(
        pool,
        id,
        &[remote(1, "PROJ", "b"), remote(2, "PROJ", "a")],
        "test",
    )
    .await
    .unwrap();
    assert_eq!(result.skipped.len(), 2, "{:?}", result.skipped);
    assert_eq!(
        catalog_of(pool).await,
        ["PROJ/a A deleted", "PROJ/b b", "PROJ/c C"]
    );
    database.drop_database().await.unwrap();
}
