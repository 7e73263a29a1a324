//! In-kernel tests: each guest program once on 4 vCPUs with a short round
//! count, judged by the ledger verdict; and the verdict failing on a
//! deliberately broken engine (recall disabled). The seed sweep runs in
//! `tests/image/run-svm.sh` (`make test`).
// Test code: a failing unwrap or index is a failing test.
#![allow(clippy::panic)]

use super::guest::Program;
use super::harness::{self, RunConfig};

fn passes(program: Program, rounds: u32, seed: u64) {
    super::init().unwrap_or_else(|e| panic!("SVM: {e}"));
    let report = harness::run(RunConfig {
        program,
        vcpus: 4,
        seed,
        rounds,
        break_recall: false,
        limit_ms: 10_000,
    });
    if !report.pass {
        report.print();
        panic!("{} failed its ledger verdict", program.name());
    }
}

altinj_ktest::suite! {
    fn svm_timer_ticks_match_the_ledger_on_4_vcpus() {
        passes(Program::Timer, 10, 1);
    }

    fn svm_tsc_deadline_ticks_match_the_ledger_on_4_vcpus() {
        passes(Program::Deadline, 10, 1);
    }

    fn svm_ipi_ring_and_broadcast_match_the_ledger_on_4_vcpus() {
        passes(Program::Ipi, 3, 1);
    }

    fn svm_device_edge_level_nmi_match_the_ledger_on_4_vcpus() {
        passes(Program::Device, 10, 1);
    }

    fn svm_tpr_masking_holds_and_releases_on_4_vcpus() {
        passes(Program::Tpr, 3, 1);
    }

    fn svm_nested_interrupts_retire_in_priority_order_on_4_vcpus() {
        passes(Program::Nested, 5, 1);
    }

    fn svm_xapic_start_then_x2apic_switch_on_4_vcpus() {
        passes(Program::Xapic, 5, 1);
    }

    fn svm_handback_of_one_vcpu_while_the_others_keep_pinging_it() {
        passes(Program::Handback, 5, 1);
    }

    fn svm_ledger_catches_an_engine_without_recall() {
        super::init().unwrap_or_else(|e| panic!("SVM: {e}"));
        let report = harness::run(RunConfig {
            program: Program::Tpr,
            vcpus: 4,
            seed: 1,
            rounds: 3,
            break_recall: true,
            limit_ms: 2_000,
        });
        assert!(!report.pass, "the ledger missed the broken recall");
        assert!(report.mismatches > 0 || report.lost_claims > 0);
    }
}
