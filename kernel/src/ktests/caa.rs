//! Lazy EOI through the `NoEoiByte` trait when the calling area cannot be
//! reached (spec §5: byte 2 of the CAA header).

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::{VMPL, one_vcpu};
use crate::caa::{GuestMemoryError, NoEoiByte};
use crate::engine::Env;
use crate::fabric::Fabric;
use crate::testing::{Fixture, GuestRun, hw_run};

/// A calling-area byte whose accessors fail while `unreachable` is set.
struct FlakyByte {
    byte: AtomicU8,
    unreachable: AtomicBool,
}

impl NoEoiByte for FlakyByte {
    fn store(&self, value: u8) -> Result<(), GuestMemoryError> {
        if self.unreachable.load(Ordering::Acquire) {
            return Err(GuestMemoryError);
        }
        self.byte.store(value, Ordering::Release);
        Ok(())
    }
    fn swap(&self, value: u8) -> Result<u8, GuestMemoryError> {
        if self.unreachable.load(Ordering::Acquire) {
            return Err(GuestMemoryError);
        }
        Ok(self.byte.swap(value, Ordering::AcqRel))
    }
}

/// One before_run / guest run / after_exit of vCPU 0 with `byte` as its
/// calling area.
fn cycle(f: &mut Fixture<4>, byte: &FlakyByte, guest: impl FnOnce(&FlakyByte)) {
    let Fixture {
        platform,
        shared,
        vm,
        doorbells,
        vmsas,
        engines,
        ..
    } = f;
    let env = Env::new(
        &*platform,
        Fabric::new(shared.as_slice(), vm),
        &doorbells[0],
    )
    .with_no_eoi_byte(Some(byte));
    let engine = engines[0].as_mut().unwrap();
    engine.before_run(&env, &mut vmsas[0]).unwrap();
    hw_run(&mut vmsas[0], GuestRun::NORMAL);
    guest(byte);
    engine.after_exit(&env, &mut vmsas[0]).unwrap();
}

altinj_ktest::suite! {
    fn lazy_eoi_unreadable_at_exit_is_resolved_at_a_later_exit_not_guessed() {
        let mut f = one_vcpu();
        let byte = FlakyByte { byte: AtomicU8::new(0), unreachable: AtomicBool::new(false) };
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        // The guest takes 0x41 and skips its EOI (swap read 1); then the
        // calling area becomes unreachable before the exit reads it.
        cycle(&mut f, &byte, |b| {
            assert_eq!(b.byte.swap(0, Ordering::AcqRel), 1);
            b.unreachable.store(true, Ordering::Release);
        });
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41), "no EOI on a guess");
        assert_eq!(e.counters().platform_errors, 1);
        // Reachable again: the next exit reads 0 and performs the EOI.
        byte.unreachable.store(false, Ordering::Release);
        cycle(&mut f, &byte, |_| {});
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().is_empty());
        assert_eq!(e.counters().lazy_eois, 1);
    }

    fn lazy_eoi_is_not_offered_when_the_byte_cannot_be_written() {
        let mut f = one_vcpu();
        let byte = FlakyByte { byte: AtomicU8::new(0), unreachable: AtomicBool::new(true) };
        f.doorbell(0).unwrap().host().post_vector(VMPL, 0x41).unwrap();
        cycle(&mut f, &byte, |_| {});
        let e = f.engine(0).unwrap();
        assert!(e.apic().isr().contains(0x41), "the guest must EOI through the MSR");
        assert_eq!(e.counters().lazy_eois, 0);
        assert_eq!(e.counters().platform_errors, 1);
    }
}
