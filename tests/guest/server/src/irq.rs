//! MSI-X vectors as the vfio-user client hands them over: one eventfd per
//! vector through `VFIO_USER_DEVICE_SET_IRQS`. QEMU emulates the MSI-X
//! table and turns a signalled eventfd into the message the guest
//! programmed; the server only writes the eventfd.
//!
//! vfio-user protocol, `VFIO_USER_DEVICE_SET_IRQS`: with
//! `VFIO_IRQ_SET_DATA_EVENTFD` the descriptors arrive as `SCM_RIGHTS`
//! data, "If no file descriptors are provided, this de-assigns the
//! specified previously configured interrupts"; `DATA_NONE` with
//! `ACTION_TRIGGER` and a count of 0 disables the whole index (as VFIO's
//! `VFIO_DEVICE_SET_IRQS` does). QEMU sends runs of valid descriptors and
//! runs of de-assignments as separate messages.

use std::fs::File;
use std::io::Write;

use log::{debug, warn};
use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_MSIX_IRQ_INDEX,
};

/// Errors of interrupt configuration.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IrqError {
    /// The index is not one this device offers.
    #[error("IRQ index {index} is not offered")]
    Index {
        /// The index.
        index: u32,
    },
    /// The vector range lies outside the index's vectors.
    #[error("vectors {start}+{count} outside the {max} vectors")]
    Range {
        /// First vector.
        start: u32,
        /// Count.
        count: u32,
        /// Vectors offered.
        max: u32,
    },
    /// The flags name an action or data type this device does not take.
    #[error("unsupported SET_IRQS flags {flags:#x}")]
    Flags {
        /// The flags.
        flags: u32,
    },
    /// More descriptors than vectors.
    #[error("{fds} descriptors for {count} vectors")]
    Fds {
        /// Descriptors received.
        fds: usize,
        /// Vectors named.
        count: u32,
    },
}

/// The MSI-X vectors' eventfds.
#[derive(Debug)]
pub struct MsixVectors {
    fds: Vec<Option<File>>,
}

impl MsixVectors {
    /// `n` vectors, none assigned.
    pub fn new(n: u32) -> Self {
        MsixVectors {
            fds: (0..n).map(|_| None).collect(),
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> u32 {
        u32::try_from(self.fds.len()).unwrap_or(u32::MAX)
    }

    /// Whether there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Whether `vector` has an eventfd.
    pub fn assigned(&self, vector: u32) -> bool {
        self.fds.get(vector as usize).is_some_and(Option::is_some)
    }

    /// Applies a `SET_IRQS` message.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> Result<(), IrqError> {
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return Err(IrqError::Index { index });
        }
        if flags & VFIO_IRQ_SET_ACTION_TRIGGER == 0 {
            return Err(IrqError::Flags { flags });
        }
        if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
            self.fds.iter_mut().for_each(|f| *f = None);
            return Ok(());
        }
        if flags & VFIO_IRQ_SET_DATA_EVENTFD == 0 {
            return Err(IrqError::Flags { flags });
        }
        let max = self.len();
        let end = start.checked_add(count).filter(|&e| e <= max);
        let Some(end) = end else {
            return Err(IrqError::Range { start, count, max });
        };
        if fds.len() > count as usize {
            return Err(IrqError::Fds {
                fds: fds.len(),
                count,
            });
        }
        let mut fds = fds.into_iter();
        for slot in self.fds.iter_mut().take(end as usize).skip(start as usize) {
            *slot = fds.next();
        }
        debug!(
            "MSI-X vectors {start}..{end} set; assigned: {:?}",
            self.assigned_list()
        );
        Ok(())
    }

    fn assigned_list(&self) -> Vec<usize> {
        (0..self.fds.len())
            .filter(|&i| self.fds.get(i).is_some_and(Option::is_some))
            .collect()
    }

    /// Signals `vector`. Returns whether an eventfd was written.
    pub fn signal(&mut self, vector: u32) -> bool {
        let Some(Some(fd)) = self.fds.get_mut(vector as usize) else {
            return false;
        };
        match fd.write_all(&1u64.to_ne_bytes()) {
            Ok(()) => true,
            Err(e) => {
                warn!("MSI-X vector {vector}: eventfd write failed: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    const TRIGGER_FD: u32 = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;

    /// A socket pair standing in for an eventfd: what `signal` writes can
    /// be read back on the other end.
    fn pair() -> (File, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (File::from(std::os::fd::OwnedFd::from(a)), b)
    }

    #[test]
    fn signal_assigned_vector_writes_one() {
        let mut v = MsixVectors::new(4);
        let (fd, mut peer) = pair();
        v.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, TRIGGER_FD, 2, 1, vec![fd])
            .unwrap();
        assert!(v.signal(2));
        let mut b = [0u8; 8];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 1);
    }

    #[test]
    fn signal_unassigned_vector_returns_false() {
        let mut v = MsixVectors::new(4);
        assert!(!v.signal(0));
        assert!(!v.signal(99));
    }

    #[test]
    fn eventfd_without_fds_deassigns() {
        let mut v = MsixVectors::new(4);
        let (fd, _peer) = pair();
        v.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, TRIGGER_FD, 0, 1, vec![fd])
            .unwrap();
        v.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, TRIGGER_FD, 0, 4, vec![])
            .unwrap();
        assert!(!v.assigned(0));
    }

    #[test]
    fn data_none_count_zero_disables_all() {
        let mut v = MsixVectors::new(4);
        let (fd, _peer) = pair();
        v.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, TRIGGER_FD, 1, 1, vec![fd])
            .unwrap();
        let none = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE;
        v.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, none, 0, 0, vec![])
            .unwrap();
        assert!(!v.assigned(1));
    }

    #[test]
    fn range_past_vectors_is_error() {
        let mut v = MsixVectors::new(4);
        let r = v.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, TRIGGER_FD, 3, 2, vec![]);
        assert!(matches!(r, Err(IrqError::Range { .. })));
        let r = v.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, TRIGGER_FD, u32::MAX, 2, vec![]);
        assert!(matches!(r, Err(IrqError::Range { .. })));
    }

    #[test]
    fn other_index_is_error() {
        let mut v = MsixVectors::new(4);
        let r = v.set_irqs(0, TRIGGER_FD, 0, 1, vec![]);
        assert_eq!(r, Err(IrqError::Index { index: 0 }));
    }
}
