//! Adapts the partition tables that `image` reads to the summary that a backup manifest records.

use dedup::manifest::{PartitionEntry, PartitionSummary};
use dedup::source::DiskSource;

/// Reads the partition table at the start of a source; None when there is none.
pub fn summarize(source: &mut dyn DiskSource) -> anyhow::Result<Option<PartitionSummary>> {
    let size = source.size();
    let table = image::partition::read_partition_table(size, &mut |offset, buf| {
        source.read_exact_at(offset, buf).map_err(std::io::Error::other)
    })?;
    Ok(table.map(|t| PartitionSummary {
        scheme: t.scheme.as_str().to_string(),
        partitions: t
            .partitions
            .into_iter()
            .map(|p| PartitionEntry {
                number: p.number,
                start: p.start,
                size: p.size,
                type_id: p.type_id,
                type_name: p.type_name,
            })
            .collect(),
    }))
}
