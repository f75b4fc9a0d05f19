//! Dashboard sessions (issue 16): a session names its user until it is
//! deleted or expires; only its hash is stored.

use chrono::Utc;
use leakscan_store::{sessions::*, testing::TestDatabase, users};

#[tokio::test]
async fn a_session_names_its_user_until_it_is_deleted_or_expires() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    let user = users::create_user(pool, "viewer", "Viewer", "", "a long password 1")
        .await
        .unwrap();
    let (token, expires) = create(pool, user.id).await.unwrap();
    assert!(expires > Utc::now());
    assert_eq!(
        authenticate(pool, &token).await.unwrap().unwrap().name,
        "viewer"
    );
    assert!(authenticate(pool, "not-a-session").await.unwrap().is_none());
    // Only the hash is stored.
    let stored: Vec<String> = sqlx::query_scalar("select token_hash from web_sessions")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(!stored.contains(&token));

    assert!(delete(pool, &token).await.unwrap());
    assert!(authenticate(pool, &token).await.unwrap().is_none());

    let (old, _) = create(pool, user.id).await.unwrap();
    sqlx::query("update web_sessions set expires_at = now() - interval '1 second'")
        .execute(pool)
        .await
        .unwrap();
    assert!(authenticate(pool, &old).await.unwrap().is_none());
    // The next sign-in clears it away.
    create(pool, user.id).await.unwrap();
    let left: i64 = sqlx::query_scalar("select count(*) from web_sessions")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
    database.drop_database().await.unwrap();
}
