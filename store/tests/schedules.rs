//! Scheduled total rescans against a real PostgreSQL: validation, once per
//! occurrence (also when two coordinators ask at once), skipping while the
//! previous scheduled rescan runs, nothing for occurrences before the
//! schedule was set.

use chrono::{DateTime, Duration, Utc};
use leakscan_store::{
    schedules::{self, Fired},
    testing::TestDatabase,
    StoreError,
};

fn started(fired: &Fired) -> Option<DateTime<Utc>> {
    match fired {
        Fired::Started(occurrence, _) => Some(*occurrence),
        _ => None,
    }
}

#[tokio::test]
async fn bad_expressions_are_refused_with_the_reason() {
    for (cron, reason) in [
        ("every day", "expected 5 fields"),
        ("* * * *", "expected 5 fields"),
        ("61 * * * *", "cron expression"),
        ("0 0 30 2 *", "never fires"),
    ] {
        match schedules::parse(cron) {
            Err(StoreError::Invalid(message)) => {
                assert!(message.contains(reason), "{cron}: {message}")
            }
            other => panic!("{cron}: {other:?}"),
        }
    }
    assert!(schedules::parse("30 2 * * MON-FRI").is_ok());
    assert!(schedules::parse("*/10 * * * * *").is_ok());
}

#[tokio::test]
async fn each_occurrence_starts_one_rescan_and_skips_while_the_last_runs() {
    let database = TestDatabase::create().await.unwrap();
    let pool = &database.pool;
    assert!(matches!(
        schedules::fire_due(pool, Utc::now()).await.unwrap(),
        Fired::Nothing
    ));
    let schedule = schedules::set(pool, "admin", "  0 3 * *   * ")
        .await
        .unwrap();
    assert_eq!(schedule.cron, "0 3 * * *");
    // Before the schedule was set: nothing, however due it looks.
    assert!(matches!(
        schedules::fire_due(pool, Utc::now()).await.unwrap(),
        Fired::Nothing
    ));

    let first = schedules::next_run(&schedule.cron, schedule.updated_at).unwrap();
    // Two coordinators at once (a failover's overlap): one starts it.
    let (a, b) = tokio::join!(
        schedules::fire_due(pool, first + Duration::seconds(1)),
        schedules::fire_due(pool, first + Duration::seconds(2)),
    );
    let fired: Vec<DateTime<Utc>> = [a.unwrap(), b.unwrap()]
        .iter()
        .filter_map(started)
        .collect();
    assert_eq!(fired, [first]);
    // Later in the same occurrence: nothing again.
    assert!(matches!(
        schedules::fire_due(pool, first + Duration::hours(1))
            .await
            .unwrap(),
        Fired::Nothing
    ));

    // The next day's occurrence while the first rescan is still queued: skipped.
    let second = first + Duration::days(1);
    match schedules::fire_due(pool, second).await.unwrap() {
        Fired::Skipped(occurrence) => assert_eq!(occurrence, second),
        other => panic!("{other:?}"),
    }
    sqlx::query("update scan_jobs set state = 'done' where requested_by = 'schedule'")
        .execute(pool)
        .await
        .unwrap();
    let third = first + Duration::days(2);
    // Missed hours collapse into the latest occurrence.
    let fired = schedules::fire_due(pool, third + Duration::hours(5))
        .await
        .unwrap();
    assert_eq!(started(&fired), Some(third));
    let (jobs,): (i64,) = sqlx::query_as(
        "select count(*) from scan_jobs where requested_by = 'schedule' and scope = 'total'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(jobs, 2);

    // Audited; deleting stops it.
    let (audited,): (i64,) =
        sqlx::query_as("select count(*) from audit_log where action like 'schedule.%'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(audited, 1);
    assert!(schedules::delete(pool, "admin").await.unwrap());
    assert!(!schedules::delete(pool, "admin").await.unwrap());
    assert!(matches!(
        schedules::fire_due(pool, first + Duration::days(9))
            .await
            .unwrap(),
        Fired::Nothing
    ));
    database.drop_database().await.unwrap();
}
