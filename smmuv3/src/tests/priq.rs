//! The PRI queue (IHI 0070 chapter 8) and CMD_PRI_RESP.

use std::sync::{Arc, Mutex};

use super::Harness;
use crate::cmdq::PriResponse;
use crate::mock::{QueueSizes, cmd};
use crate::regs::{gerror, off, queue_ptr};
use crate::{PageRequest, PageRequestOutcome, PriResponseNotice};

fn request(prg: u16, last: bool) -> PageRequest {
    PageRequest {
        sid: 0x42,
        ssid: Some(7),
        addr: 0x1234_5000,
        read: true,
        write: true,
        exec: false,
        privileged: false,
        last,
        prg_index: prg,
    }
}

#[test]
fn page_request_is_queued_and_pri_resp_reaches_the_vmm() {
    let mut h = Harness::new(&["ats=1", "pri=1"]);
    let mut d = h.probe();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    h.smmu
        .set_pri_response_callback(move |n| sink.lock().unwrap().push(*n));
    assert_eq!(
        h.smmu.page_request(&h.mem, &request(3, true)),
        PageRequestOutcome::Queued
    );
    let e = d.next_page_request(&mut h.smmu, &h.mem).unwrap();
    assert_eq!((e.sid(), e.ssv(), e.ssid()), (0x42, true, 7));
    assert!(e.read() && e.write() && !e.exec() && !e.privileged() && e.last());
    assert_eq!((e.prg_index(), e.addr()), (3, 0x1234_5000));
    assert!(d.issue(&mut h.smmu, &h.mem, &[cmd::pri_resp(0x42, Some(7), 3, 2)]));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[PriResponseNotice {
            sid: 0x42,
            ssid: Some(7),
            prg_index: 3,
            resp: PriResponse::Success
        }]
    );
}

#[test]
fn pri_queue_golden_bytes() {
    let e = request(0x1ff, true).encode();
    // SID 0x42, SSID 7, Read|Write|Last|SSV (bits 60-63); PRG index
    // 0x1ff below the page address.
    assert_eq!(e.0, [0xf000_0007_0000_0042, 0x1234_51ff]);
}

#[test]
fn full_pri_queue_overflows_and_answers_last_request_itself() {
    let mut h = Harness::new(&["ats=1", "pri=1"]);
    let sizes = QueueSizes {
        priq: 1,
        ..QueueSizes::default()
    };
    let _d = crate::mock::Driver::probe_with(&mut h.smmu, &h.mem, &mut h.alloc, sizes).unwrap();
    for i in 0..2 {
        assert_eq!(
            h.smmu.page_request(&h.mem, &request(i, false)),
            PageRequestOutcome::Queued
        );
    }
    assert_eq!(
        h.smmu.page_request(&h.mem, &request(2, false)),
        PageRequestOutcome::Dropped
    );
    assert_eq!(
        h.smmu.page_request(&h.mem, &request(2, true)),
        PageRequestOutcome::AutoResponse(PriResponse::Success)
    );
    assert!(queue_ptr::QueuePtr(h.read32(off::PRIQ_PROD)).ovf());
}

#[test]
fn pri_queue_disabled_or_absent_fails_last_request() {
    let mut h = Harness::new(&["ats=1", "pri=1"]);
    assert_eq!(
        h.smmu.page_request(&h.mem, &request(0, true)),
        PageRequestOutcome::AutoResponse(PriResponse::Fail)
    );
    let mut h = Harness::new(&[]);
    assert_eq!(
        h.smmu.page_request(&h.mem, &request(0, false)),
        PageRequestOutcome::Dropped
    );
}

#[test]
fn pri_queue_write_abort_sets_priq_abt_err() {
    let mut h = Harness::new(&["ats=1", "pri=1"]);
    h.write64(off::PRIQ_BASE, (super::RAM + 0x1000) | 3);
    h.write32(off::CR0, 0b10);
    let r = h.smmu.page_request(&h.mem, &request(0, true));
    assert_eq!(r, PageRequestOutcome::AutoResponse(PriResponse::Success));
    assert!(h.smmu.error_active(gerror::PRIQ_ABT_ERR));
}
