//! The event queue (IHI 0070 chapter 7) and its interrupts.

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::{Access, Gpa};

use super::{S1Setup, SID};
use crate::TranslateResult;
use crate::event::EventId;
use crate::irq::{IrqSource, Signal};
use crate::mock::QueueSizes;
use crate::regs::{gerror, off, queue_ptr};

const R: Access = Access::READ;

fn fault(s: &mut S1Setup) -> TranslateResult {
    s.h.translate(SID, None, 0x4000_0000, R)
}

#[test]
fn full_event_queue_sets_ovflg_once_and_loses_events() {
    let mut s = S1Setup::new(&[]);
    // 128 entries: the 129th event overflows.
    for _ in 0..128 {
        assert!(matches!(
            fault(&mut s),
            TranslateResult::Fault { recorded: true, .. }
        ));
    }
    assert!(matches!(
        fault(&mut s),
        TranslateResult::Fault {
            recorded: false,
            ..
        }
    ));
    let prod = s.h.read32(off::EVTQ_PROD);
    assert!(queue_ptr::QueuePtr(prod).ovf());
    assert_eq!(prod & 0xff, 0x80, "index 0, wrap 1");
    // A second lost event leaves the outstanding overflow as it is.
    fault(&mut s);
    assert_eq!(s.h.read32(off::EVTQ_PROD), prod);
    // The driver consumes one event and acknowledges the overflow.
    assert!(s.next_event().is_some());
    let cons = s.h.read32(off::EVTQ_CONS);
    assert!(queue_ptr::QueuePtr(cons).ovf());
    assert!(matches!(
        fault(&mut s),
        TranslateResult::Fault { recorded: true, .. }
    ));
    // Full again: a new overflow toggles OVFLG back.
    fault(&mut s);
    assert!(!queue_ptr::QueuePtr(s.h.read32(off::EVTQ_PROD)).ovf());
}

#[test]
fn events_are_dropped_while_event_queue_disabled() {
    let mut s = S1Setup::new(&[]);
    s.h.write32(off::CR0, s.drv.enables & !0b100);
    assert!(matches!(
        fault(&mut s),
        TranslateResult::Fault {
            recorded: false,
            ..
        }
    ));
    assert_eq!(s.h.read32(off::EVTQ_PROD), 0);
}

#[test]
fn event_queue_write_abort_sets_evtq_abt_err() {
    let mut s = S1Setup::new(&[]);
    let en = s.drv.enables;
    s.h.write32(off::CR0, en & !0b100);
    s.h.write64(off::EVTQ_BASE, (super::RAM + 0x10000) | 7);
    s.h.write32(off::CR0, en);
    assert!(matches!(
        fault(&mut s),
        TranslateResult::Fault {
            recorded: false,
            ..
        }
    ));
    assert!(s.h.smmu.error_active(gerror::EVTQ_ABT_ERR));
    let irqs = s.h.irqs.lock().unwrap().clone();
    assert!(irqs.iter().any(|i| i.source == IrqSource::GlobalError));
}

#[test]
fn event_raises_wired_interrupt_when_msi_address_is_zero() {
    let mut s = S1Setup::new(&[]);
    s.h.irqs.lock().unwrap().clear();
    fault(&mut s);
    let irqs = s.h.irqs.lock().unwrap().clone();
    assert_eq!(irqs.len(), 1);
    assert_eq!(
        (irqs[0].source, irqs[0].signal),
        (IrqSource::EventQueue, Signal::Wired)
    );
}

#[test]
fn event_msi_goes_to_its_address() {
    let mut s = S1Setup::new(&[]);
    let en = s.h.read32(off::IRQ_CTRL);
    s.h.write32(off::IRQ_CTRL, 0);
    // To a doorbell outside RAM, and to RAM.
    s.h.write64(off::EVTQ_IRQ_CFG0, 0x0809_0040);
    s.h.write32(off::EVTQ_IRQ_CFG1, 0x21);
    s.h.write32(off::IRQ_CTRL, en);
    s.h.irqs.lock().unwrap().clear();
    fault(&mut s);
    let irqs = s.h.irqs.lock().unwrap().clone();
    assert_eq!(
        irqs[0].signal,
        Signal::Msi {
            addr: 0x0809_0040,
            data: 0x21
        }
    );
    s.h.write32(off::IRQ_CTRL, 0);
    s.h.write64(off::EVTQ_IRQ_CFG0, 0x1000);
    s.h.write32(off::IRQ_CTRL, en);
    fault(&mut s);
    assert_eq!(s.h.mem.read_u32_le(Gpa(0x1000)).unwrap(), 0x21);
}

#[test]
fn refused_event_msi_sets_msi_evtq_abt_err() {
    let mut s = S1Setup::new(&[]);
    let en = s.h.read32(off::IRQ_CTRL);
    s.h.write32(off::IRQ_CTRL, 0);
    s.h.write64(off::EVTQ_IRQ_CFG0, 0x0809_0040);
    s.h.write32(off::IRQ_CTRL, en);
    s.h.smmu
        .set_interrupt_callback(|i| i.source != IrqSource::EventQueue);
    fault(&mut s);
    assert!(s.h.smmu.error_active(gerror::MSI_EVTQ_ABT_ERR));
}

#[test]
fn interrupts_stay_quiet_when_irq_ctrl_disables_them() {
    let mut s = S1Setup::new(&[]);
    s.h.write32(off::IRQ_CTRL, 0);
    s.h.irqs.lock().unwrap().clear();
    fault(&mut s);
    assert!(s.h.irqs.lock().unwrap().is_empty());
    assert!(s.next_event().is_some(), "still recorded");
}

#[test]
fn linux_consumes_events_in_order() {
    let mut h = super::Harness::new(&[]);
    let sizes = QueueSizes {
        evtq: 3,
        ..QueueSizes::default()
    };
    let mut d = crate::mock::Driver::probe_with(&mut h.smmu, &h.mem, &mut h.alloc, sizes).unwrap();
    for sid in [0x7000, 0x7100, 0x7200] {
        h.translate(sid, None, 0, R);
    }
    let ids: Vec<_> = std::iter::from_fn(|| d.next_event(&mut h.smmu, &h.mem))
        .map(|e| (e.id(), e.sid()))
        .collect();
    assert_eq!(
        ids,
        [
            (EventId::BadStreamId, 0x7000),
            (EventId::BadStreamId, 0x7100),
            (EventId::BadStreamId, 0x7200)
        ]
    );
}
