//! The BUSY auditor itself (`crate::busy_audit`, spec §2): it must count a
//! write to a runnable VMSA, and nothing the guard allows.

use altinj_vmsa::{EventInj, VIntrCtrl, VmsaAccess, VmsaPage};

use crate::busy_audit::BusyAudit;

altinj_ktest::suite! {
    fn busy_audit_counts_each_write_while_busy_is_clear() {
        let mut page = VmsaPage::new();
        let mut audit = BusyAudit::new(&mut page);
        audit.set_event_inj(EventInj::external_interrupt(0x41));
        audit.set_rax(1);
        assert_eq!(audit.writes_while_runnable(), 2);
    }

    fn busy_audit_names_the_first_field_written_while_runnable() {
        let mut page = VmsaPage::new();
        let mut audit = BusyAudit::new(&mut page);
        let ctrl = audit.vintr_ctrl();
        audit.set_vintr_ctrl(ctrl.with_v_irq(true));
        audit.set_event_inj(EventInj::nmi());
        assert_eq!(audit.first_field(), Some("vintr_ctrl"));
    }

    fn busy_audit_counts_nothing_between_test_and_set_and_clear() {
        let mut page = VmsaPage::new();
        let mut audit = BusyAudit::new(&mut page);
        assert!(!audit.test_and_set_busy());
        audit.set_event_inj(EventInj::external_interrupt(0x41));
        let ctrl = audit.vintr_ctrl();
        audit.set_vintr_ctrl(ctrl.with_v_tpr(3));
        audit.clear_busy();
        assert_eq!(audit.writes_while_runnable(), 0);
        assert!(!page.vintr_ctrl().busy());
    }

    fn busy_audit_raising_busy_alone_is_the_guard_not_a_write() {
        let mut page = VmsaPage::new();
        let mut audit = BusyAudit::new(&mut page);
        let ctrl = audit.vintr_ctrl();
        audit.set_vintr_ctrl(ctrl.with_busy(true));
        assert_eq!(audit.writes_while_runnable(), 0);
    }

    fn busy_audit_counts_an_edit_made_together_with_raising_busy() {
        let mut page = VmsaPage::new();
        let mut audit = BusyAudit::new(&mut page);
        audit.set_vintr_ctrl(VIntrCtrl::new().with_busy(true).with_v_irq(true));
        assert_eq!(audit.writes_while_runnable(), 1);
    }

    fn busy_audit_counts_a_write_after_busy_was_cleared() {
        let mut page = VmsaPage::new();
        let mut audit = BusyAudit::new(&mut page);
        audit.test_and_set_busy();
        audit.clear_busy();
        audit.set_event_inj(EventInj::nmi());
        assert_eq!(audit.writes_while_runnable(), 1);
    }
}
