//! Advisory file locks (flock) shared by the processes that use one library, through nix's `Flock`: a lock
//! owns its file and is released when it is dropped (or closed with it).

use std::fs::File;
use std::io;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// A lock held on a file; released when dropped.
#[derive(Debug)]
pub struct Held(Flock<File>);

impl Held {
    /// Releases the lock and gives the file back, to be locked again later.
    pub fn release(self) -> io::Result<File> {
        // LOCK_UN on a descriptor we own does not fail (flock(2): it neither waits nor allocates). Should it,
        // the guard handed back is dropped here: nix's Drop unlocks again (and panics if that fails too), then
        // the file is closed, which releases the lock in any case.
        self.0.unlock().map_err(|(_, e)| e.into())
    }

    pub fn file_mut(&mut self) -> &mut File {
        &mut self.0
    }
}

/// Takes a lock on `file`, waiting for it.
pub fn lock(file: File, kind: LockKind) -> io::Result<Held> {
    let arg = match kind {
        LockKind::Shared => FlockArg::LockShared,
        LockKind::Exclusive => FlockArg::LockExclusive,
    };
    match take(file, arg)? {
        Ok(held) => Ok(held),
        // Only a lock that does not wait is refused for being held elsewhere.
        Err(_) => Err(Errno::EWOULDBLOCK.into()),
    }
}

/// Takes a lock on `file` if no one else holds one that conflicts; otherwise gives the file back.
pub fn try_lock(file: File, kind: LockKind) -> io::Result<Result<Held, File>> {
    let arg = match kind {
        LockKind::Shared => FlockArg::LockSharedNonblock,
        LockKind::Exclusive => FlockArg::LockExclusiveNonblock,
    };
    take(file, arg)
}

fn take(mut file: File, arg: FlockArg) -> io::Result<Result<Held, File>> {
    loop {
        match Flock::lock(file, arg) {
            Ok(held) => return Ok(Ok(Held(held))),
            // A signal while waiting: wait again.
            Err((f, Errno::EINTR)) => file = f,
            Err((f, Errno::EWOULDBLOCK)) => return Ok(Err(f)),
            Err((_, e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_excludes_other_open_files_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let open = || File::options().create(true).truncate(false).write(true).open(&p).unwrap();
        let shared = lock(open(), LockKind::Shared).unwrap();
        let other_shared = try_lock(open(), LockKind::Shared).unwrap();
        assert!(other_shared.is_ok(), "shared locks share");
        assert!(try_lock(open(), LockKind::Exclusive).unwrap().is_err(), "an exclusive lock waits for shared ones");
        drop(other_shared);
        let file = shared.release().unwrap();
        let exclusive = try_lock(open(), LockKind::Exclusive).unwrap().expect("no lock is held any more");
        assert!(try_lock(file, LockKind::Shared).unwrap().is_err(), "the released file is refused while held");
        drop(exclusive);
        assert!(try_lock(open(), LockKind::Shared).unwrap().is_ok(), "dropping releases");
    }
}
