//! Which EXITINTINFO events the engine re-injects (spec §2; AMD APM vol. 2
//! §15.7.2 EXITINTINFO).
//!
//! EXITINTINFO.V = 1 says the exit interrupted the delivery of an event
//! through the guest's IDT. `altinj_vmsa::rules::reinject_exit_int_info` already
//! drops malformed values (reserved types and bits, EV on a non-exception,
//! INTR 0-15, exception 2 or above 31) and leaves INTn/#BP/#OF to the
//! guest. On top of that the engine checks where the event came from
//! (\[choice\], defence in depth against a forged EXITINTINFO):
//!
//! - **External interrupt (type 0)**: only the guest's APIC produces one,
//!   and with Alternate Injection the engine is that APIC. It is re-injected
//!   only when it is a vector the engine presented in the run that just
//!   ended and that hardware took: an EVENTINJ the hardware consumed (also
//!   an INTR the engine had itself re-injected from an earlier
//!   EXITINTINFO), or a V_IRQ it cleared. Such a vector is in ISR (an
//!   EVENTINJ vector is acknowledged at presentation, a taken V_IRQ just
//!   before this check) unless the guest EOI'd ahead of it.
//! - **NMI (type 2)**: only when the engine presented an NMI in that run and
//!   hardware took it (EVENTINJ consumed, or V_NMI cleared).
//! - **#MC (exception 18)**: only when the engine injected it in that run
//!   (EVENTINJ consumed). A guest cannot raise #MC itself.
//! - **Other exceptions (type 3)**: the guest raises these itself (a #PF or
//!   #GP being delivered when, e.g., a nested page fault on its IDT or stack
//!   exits), so EXITINTINFO legitimately carries exceptions the engine never
//!   injected, and they are re-injected (the APM: the VMM must re-inject
//!   EXITINTINFO or the event is lost). Only vectors the processor defines
//!   as exceptions qualify (AMD APM vol. 2 §8.2): 0, 1, 5-8, 10-14, 16, 17,
//!   19, 21, 29, 30 (3 and 4 are re-executed by the guest, 2 is NMI, 18 is
//!   #MC above). Reserved vectors 9, 15, 20, 22-27, 31 and #HV (28: no one
//!   can inject #HV into a VMPL with Alternate Injection, spec §1) are
//!   dropped. EV = 1 is accepted only on a vector that pushes an error code
//!   (8, 10-14, 17, 21, 29, 30); EV = 0 is accepted on every qualifying
//!   vector, because in real mode no error code is pushed (AMD APM vol. 2
//!   §8.2, "error codes").
//!
//! And whatever the event, EXITINTINFO is honoured only on an exit that can
//! happen while an event is being delivered (AMD APM vol. 2 §15.7.2: an
//! intercept during event delivery): a nested page fault, an exception
//! intercept (0x40-0x5F), INTR/NMI/SMI/INIT (0x60-0x63) or a task switch
//! (0x7D). An instruction intercept (VMGEXIT, MSR, HLT, CPUID, IOIO, VINTR,
//! ...) happens at an instruction, after any delivery completed: an
//! EXITINTINFO there is forged, and re-injecting it would deliver an event
//! the guest already took a second time.
//!
//! Everything dropped is counted in `Counters::forged_exit_events`.

use altinj_vmsa::{EventInj, EventType, ExitKind};

/// What the engine presented in the run that just ended and hardware took
/// (consumed EVENTINJ, cleared V_IRQ, cleared V_NMI).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct Presented {
    /// APIC vector taken from EVENTINJ.
    pub eventinj_vector: Option<u8>,
    /// APIC vector taken from V_IRQ.
    pub virq_vector: Option<u8>,
    /// An NMI taken from EVENTINJ or V_NMI.
    pub nmi: bool,
    /// #MC taken from EVENTINJ.
    pub machine_check: bool,
}

/// Whether an exit of `kind` can interrupt an event delivery (module doc).
pub(crate) fn may_interrupt_delivery(kind: ExitKind) -> bool {
    match kind {
        ExitKind::Npf => true,
        ExitKind::Other(code) => matches!(code, 0x40..=0x63 | 0x7D),
        ExitKind::Invalid
        | ExitKind::Busy
        | ExitKind::IdleRequired
        | ExitKind::Vintr
        | ExitKind::Msr
        | ExitKind::Vmgexit => false,
    }
}

/// Exception vector of #MC.
const MC_VECTOR: u8 = 18;

/// Exceptions the processor raises in a guest itself (AMD APM vol. 2 §8.2),
/// as a bit mask: 0, 1, 5-8, 10-14, 16, 17, 19, 21, 29, 30. #BP (3), #OF
/// (4) never reach here (the guest re-executes them), NMI (2) is not an
/// exception vector and #MC (18) has its own rule.
const GUEST_EXCEPTIONS: u32 = (1 << 0)
    | (1 << 1)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 16)
    | (1 << 17)
    | (1 << 19)
    | (1 << 21)
    | (1 << 29)
    | (1 << 30);

/// Exceptions that push an error code in protected/long mode (AMD APM
/// vol. 2 §8.2): #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX.
const ERROR_CODE_EXCEPTIONS: u32 = (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 17)
    | (1 << 21)
    | (1 << 29)
    | (1 << 30);

/// Whether bit `vector` is set in `mask` (vectors above 31 never are).
fn in_mask(mask: u32, vector: u8) -> bool {
    vector < 32 && mask & (1u32 << (vector & 31)) != 0
}

/// Whether the well-formed EXITINTINFO `event` (already through
/// `altinj_vmsa::rules`) may be re-injected, given what the engine presented (see
/// the module doc).
pub(crate) fn may_reinject(event: EventInj, presented: &Presented) -> bool {
    let vector = event.vector();
    match event.event_type() {
        EventType::Intr => {
            presented.eventinj_vector == Some(vector) || presented.virq_vector == Some(vector)
        }
        EventType::Nmi => presented.nmi,
        EventType::Exception if vector == MC_VECTOR => presented.machine_check,
        EventType::Exception => {
            in_mask(GUEST_EXCEPTIONS, vector)
                && (!event.error_code_valid() || in_mask(ERROR_CODE_EXCEPTIONS, vector))
        }
        // Software interrupts are re-executed and reserved types rejected by
        // `altinj_vmsa::rules` before this point; refuse anything else.
        _ => false,
    }
}
