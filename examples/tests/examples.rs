//! The examples are tests too.

#[path = "../step_jobs.rs"]
#[allow(dead_code)]
mod step_jobs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_jobs_example_runs_to_completion() {
    step_jobs::run().await.expect("the step-jobs example completes");
}
