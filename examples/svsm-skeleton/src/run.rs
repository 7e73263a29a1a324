//! The run loop of one vCPU (docs/integration.md, "The run loop"): the
//! guest VMSA viewed through `VmsaPage::view_mut`, the window between
//! collect and Run VMPL closed with `work_pending`, a skipped run taken back
//! with `cancel_run`, and SVSM calls answered on copied-out registers.

use altinj_kernel::Fatal;
use altinj_kernel::protocol::CallRegs;
use altinj_vmsa::{ExitKind, VmsaAccess, VmsaPage};

use crate::GUEST_VMPL;
use crate::percpu::{PerCpu, engine_and_env};
use crate::protocol::{Reply, SvsmReqError, svsm_request};

/// Re-checks of `work_pending` before one run (a hostile host can keep
/// posting; what lands later raises #HV and brings the loop round).
const MAX_RECHECKS: u32 = 4;

/// Why the loop stops the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stop {
    /// The mapped guest VMSA is not one aligned 4 KiB page.
    BadVmsa,
    /// The engine reported a state it cannot repair.
    Fatal(Fatal),
    /// A request failed fatally.
    Request,
}

impl From<Fatal> for Stop {
    fn from(fatal: Fatal) -> Self {
        Self::Fatal(fatal)
    }
}

/// VMPL0's interrupt flag and work (stubs of the SVSM's own code).
pub trait Cpu {
    /// Disables VMPL0 interrupts (#HV, the timer wait).
    fn disable_interrupts(&self);
    /// Enables them.
    fn enable_interrupts(&self);
    /// VMPL0 needs this CPU now (e.g. NoFurtherSignal, a VMPL0 event).
    fn vmpl0_needs_the_cpu(&self) -> bool;
    /// Does VMPL0's own work.
    fn handle_vmpl0_work(&self);
}

/// One round of the loop: prepare, run the guest VMPL, process the exit.
/// `vmsa_page` is the guest's VMSA page as the SVSM maps it.
pub fn run_once(cpu: &mut PerCpu, vmsa_page: &mut [u8], svsm: &impl Cpu) -> Result<(), Stop> {
    let vmsa = VmsaPage::view_mut(vmsa_page).ok_or(Stop::BadVmsa)?;
    let ghcb_no_further_signal = cpu.platform.ghcb.no_further_signal();
    let (engine, env, caa) = engine_and_env(cpu);

    svsm.disable_interrupts();
    engine.before_run(&env, vmsa)?;
    for _ in 0..MAX_RECHECKS {
        // A kick, host post or timer fire since the collect.
        if !engine.work_pending(&env) {
            break;
        }
        engine.before_run(&env, vmsa)?;
    }
    if ghcb_no_further_signal || svsm.vmpl0_needs_the_cpu() {
        // No run: take back what before_run presented (never after_exit).
        engine.cancel_run(&env, vmsa);
        svsm.enable_interrupts();
        svsm.handle_vmpl0_work();
        return Ok(());
    }
    let ran = env.platform.ghcb.run_vmpl(GUEST_VMPL);
    svsm.enable_interrupts();
    if ran.is_err() {
        // Run VMPL failed: nothing ran, so nothing to process.
        engine.cancel_run(&env, vmsa);
        return Ok(());
    }
    let exit = engine.after_exit(&env, vmsa)?;

    if exit.exit == ExitKind::Vmgexit && caa.take_call_pending() {
        // Copied out, as the SVSM's request loop does for every protocol.
        let regs = CallRegs {
            rax: vmsa.rax(),
            rcx: vmsa.rcx(),
            rdx: vmsa.rdx(),
            r8: vmsa.r8(),
        };
        let answer = match svsm_request(engine, &env, &regs) {
            Ok(Reply::Done(result)) => Ok(result),
            // The hand-back needs the VMSA: completed here, BUSY still set
            // by after_exit, before the next before_run.
            Ok(Reply::HandBack(token)) => {
                crate::protocol::request_result(engine.complete_hand_back(&env, vmsa, token))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(result) => result.write_to(vmsa),
            Err(SvsmReqError::RequestError(code)) => vmsa.set_rax(code.value()),
            Err(SvsmReqError::FatalError) => return Err(Stop::Request),
        }
    }
    Ok(())
}
