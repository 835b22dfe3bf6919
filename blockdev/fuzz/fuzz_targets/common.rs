#![allow(dead_code)] // each fuzz target uses a part of it
//! A small in-memory LUN shared by the fuzz targets.

use std::sync::{Arc, OnceLock};

use blockdev::engine::Engine;
use blockdev::iscsi::{Portal, Target};
use blockdev::scsi::{Lun, LunSet};
use blockdev::source::{Source, SourceError};
use blockdev::{Options, PseudoDisk};

pub const TARGET: &str = "iqn.2026-11.io.livemount:fuzz";

struct Pattern;

impl Source for Pattern {
    fn size(&self) -> u64 {
        4 << 20
    }
    fn chunk_size(&self) -> u32 {
        65536
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), SourceError> {
        buf.clear();
        buf.resize(65536, index as u8);
        Ok(())
    }
    fn describe(&self) -> String {
        "fuzz".into()
    }
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

fn lun_set() -> LunSet {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let disk = PseudoDisk::open(dir.path(), Arc::new(Pattern), Engine::start().unwrap(), Options::default()).unwrap();
    LunSet { luns: vec![Arc::new(Lun::new(disk, "FUZZ".into(), [0x60; 16]))] }
}

pub fn luns() -> &'static LunSet {
    static SET: OnceLock<LunSet> = OnceLock::new();
    SET.get_or_init(lun_set)
}

pub fn portal() -> Arc<Portal> {
    static PORTAL: OnceLock<Arc<Portal>> = OnceLock::new();
    PORTAL
        .get_or_init(|| {
            let p = Portal::new("127.0.0.1:3260".into());
            p.add_target(Arc::new(Target::new(TARGET.into(), lun_set(), None, vec![])));
            p
        })
        .clone()
}
