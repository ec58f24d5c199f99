//! The fault-injection matrix (see `provision_testkit::fault_matrix`): every cloud, every
//! operation, every upstream call, every fault kind. Each cloud's table is printed (run with
//! `--nocapture` to see it, as `scripts/test` does) and every cell must pass.

use provision_testkit::fault_matrix;
use provision_testkit::stack::Stack;
use provision_testkit::world::{AwsWorld, AzureWorld, GcpWorld};

async fn matrix<S: Stack>() {
    let cells = fault_matrix::run::<S>().await;
    let table = fault_matrix::table(S::CLOUD, &cells);
    println!("{table}");
    let failed = cells.iter().filter(|c| !c.passed()).count();
    assert!(!cells.is_empty(), "no cell ran");
    assert_eq!(
        failed,
        0,
        "{failed} of {} cells failed:\n{table}",
        cells.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_matrix_aws() {
    matrix::<AwsWorld>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_matrix_azure() {
    matrix::<AzureWorld>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_matrix_gcp() {
    matrix::<GcpWorld>().await;
}

/// The same matrix with the real balenaCloud API server (open-balena-api) behind the fault
/// proxy, for one cloud (ClearBlade: its cells cover every balenaCloud call the flow makes):
/// the rollbacks and the convergence after them hold against the real API's answers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_matrix_gcp_on_open_balena() {
    matrix::<provision_testkit::stack::OnOpenBalena<GcpWorld>>().await;
}
