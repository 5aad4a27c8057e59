//! kyu-storetest: the conformance suite every storage backend runs.
//!
//! Each case is an async function over any [`kyu_store::Store`] whose clock
//! is manual (`Clock::manual`), so leases and delays pass by moving time, not
//! by sleeping. A backend stamps out one `#[tokio::test]` per case with
//! [`conformance!`], giving it an async factory that returns a fresh store on
//! its own database and a guard that keeps that database alive:
//!
//! ```ignore
//! async fn fresh() -> (SqliteStore, Fresh) { kyu_sqlite::testing::fresh_store() }
//! kyu_storetest::conformance!(fresh);
//! ```
//!
//! A change to the trait or to either backend extends this suite.

pub mod deps;
pub mod hostile;
pub mod job_admin;
pub mod job_claim;
pub mod job_insert;
pub mod job_report;
pub mod log;
pub mod observe;
pub mod queue;
pub mod race;
pub mod schedules;
pub mod support;
pub mod walk;

/// Stamps out the whole suite for one backend.
#[macro_export]
macro_rules! conformance {
    ($factory:path) => {
        $crate::conformance!(@cases $factory;
            job_insert::insert_and_get,
            job_insert::generated_ids_and_defaults,
            job_insert::duplicate_id_creates_nothing,
            job_insert::unique_key_window,
            job_insert::batch_is_atomic,
            job_insert::delayed_job_waits_for_run_at,
            job_claim::priority_then_fifo,
            job_claim::claim_respects_max_and_sets_lease,
            job_claim::queues_are_isolated,
            job_claim::claimed_job_is_not_claimed_again,
            job_claim::next_run_at_reported,
            job_report::complete_stores_result,
            job_report::second_report_on_terminal_is_refused,
            job_report::stale_token_changes_nothing,
            job_report::fail_retries_with_backoff_then_fails,
            job_report::fail_without_retry_and_custom_delay,
            job_report::lease_expiry_counts_attempt_and_retries,
            job_report::lease_expiry_exhausts_to_failed,
            job_report::heartbeat_extends_lease,
            job_report::snooze_gives_attempt_back,
            job_report::checkpoint_and_progress_are_fenced,
            job_report::reports_in_a_batch_are_independent,
            job_report::reports_ride_on_the_claim,
            job_report::heartbeating_job_past_its_timeout_fails_with_timeout,
            job_report::queue_default_timeout_applies,
            hostile::bad_report_in_a_batch_holds_back_nothing,
            hostile::nul_and_huge_numbers_are_refused_alike,
            hostile::claims_and_filters_are_checked,
            job_admin::cancel_queued_job,
            job_admin::cancel_running_job_then_fail,
            job_admin::cancel_running_job_then_complete,
            job_admin::cancel_running_job_lease_expiry,
            job_admin::cancel_terminal_is_conflict,
            job_admin::operator_retry,
            job_admin::bulk_retry_by_filter,
            job_admin::delete_job,
            job_admin::prune_after_retention,
            job_admin::keep_failed_ms_per_job,
            job_admin::list_filters_and_pages,
            job_admin::events_after_commit,
            queue::pause_and_resume,
            queue::concurrency_limit,
            queue::first_queue_limits_hold_in_a_claim_of_several,
            queue::rate_limit,
            queue::counts,
            queue::group_concurrency_is_fair,
            deps::waits_for_dependencies,
            deps::results_flow_to_dependents,
            deps::failure_propagates_transitively,
            deps::continue_on_failure_runs,
            deps::unknown_dependency_refused,
            deps::cancel_parent_and_child,
            deps::chord_of_three_fans_in,
            deps::chain_of_five_passes_results,
            deps::children_with_wait_resume_from_checkpoint,
            deps::children_without_wait_and_failed_child,
            deps::children_already_done_keep_the_job_running,
            deps::retry_with_dependents_runs_the_rest_of_the_chain,
            log::job_log_is_fenced_bounded_and_kept_per_attempt,
            observe::timeline_records_each_transition,
            observe::timeline_of_dependencies_and_children,
            observe::counts_stay_right_through_every_transition,
            observe::oldest_ready_job_per_queue,
            observe::workers_are_listed_with_what_they_run,
            observe::stats_count_per_minute_and_queue,
            observe::observers_hear_what_committed,
            observe::dead_letter_set_is_listed_and_deleted_by_filter,
            deps::flow_of_ten_thousand_releases_parent_once,
            schedules::schedule_crud_and_advance,
            schedules::scheduler_fires_each_tick_once,
            race::concurrent_claimers_never_share_a_job,
            race::concurrent_reports_and_claims,
            walk::random_walks_keep_the_invariants
        );
    };
    (@cases $factory:path; $($module:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $factory().await;
                $crate::$module::$case(store).await;
            }
        )*
    };
}
