//! Reference counts of a [`MetaFile`]: the cached refcount blocks, their growth (new blocks
//! and a larger refcount table, placed at the end of the file), cluster allocation and the
//! commit that makes raised counts durable before anything points at the new clusters.
//!
//! Invariants (see the parent module for the whole protocol): counts are only changed in
//! memory until [`MetaFile::commit_refcounts`]; blocks are written before the table that
//! references them; allocation hands out clusters whose count was zero when the operation
//! began, never one released during it.

use super::*;

impl MetaFile {
    pub(super) fn block(&mut self, bi: u64) -> Result<Option<&mut Block>, ImageError> {
        let Some(&entry) = self.reftable.get(bi as usize) else {
            return Ok(None);
        };
        let off = entry & !REFTABLE_RESERVED;
        if off == 0 {
            return Ok(None);
        }
        if !self.blocks.contains_key(&bi) {
            if !off.is_multiple_of(self.cs) || off.saturating_add(self.cs) > self.host_bound() {
                return Err(corrupt(format!(
                    "refcount block {bi} at {off:#x} is invalid"
                )));
            }
            let mut data = vec![0u8; self.cs as usize];
            pread_fill(&self.file, &mut data, off, &self.path)?;
            self.blocks.insert(bi, Block { data, dirty: false });
        }
        Ok(self.blocks.get_mut(&bi))
    }

    pub(crate) fn get_rc(&mut self, cluster: u64) -> Result<u64, ImageError> {
        let (bi, idx) = (
            cluster / self.per_block,
            (cluster % self.per_block) as usize,
        );
        let order = self.header.refcount_order;
        Ok(self
            .block(bi)?
            .map_or(0, |b| get_refcount(&b.data, idx, order)))
    }

    pub(super) fn set_rc(
        &mut self,
        cluster: u64,
        value: u64,
        depth: u32,
    ) -> Result<(), ImageError> {
        let (bi, idx) = (
            cluster / self.per_block,
            (cluster % self.per_block) as usize,
        );
        if value == 0 && self.block(bi)?.is_none() {
            return Ok(());
        }
        self.ensure_block(bi, depth)?;
        let order = self.header.refcount_order;
        let block = self
            .block(bi)?
            .ok_or_else(|| corrupt("refcount block vanished after placement"))?;
        set_refcount(&mut block.data, idx, value, order);
        block.dirty = true;
        Ok(())
    }

    /// Makes sure refcount block `bi` exists, placing a new one at the next free cluster (a
    /// block placed inside the range it covers describes itself; otherwise the block covering
    /// its own cluster is ensured in turn).
    pub(super) fn ensure_block(&mut self, bi: u64, depth: u32) -> Result<(), ImageError> {
        if depth > MAX_BLOCK_DEPTH {
            return Err(corrupt("refcount block placement does not converge"));
        }
        if bi >= self.reftable.len() as u64 {
            self.grow_reftable(bi, depth)?;
        }
        if self.block(bi)?.is_some() {
            return Ok(());
        }
        let b = self.take_candidate()?;
        self.reftable[bi as usize] = b * self.cs;
        self.reftable_dirty = true;
        self.blocks.insert(
            bi,
            Block {
                data: vec![0u8; self.cs as usize],
                dirty: true,
            },
        );
        self.set_rc(b, 1, depth + 1)
    }

    /// Replaces the refcount table with a larger one at the end of the file (written and
    /// switched to by [`MetaFile::commit_refcounts`]; the old one is released in the down
    /// phase).
    pub(super) fn grow_reftable(&mut self, min_index: u64, depth: u32) -> Result<(), ImageError> {
        if self.releasing {
            return Err(corrupt("refcount table growth during release"));
        }
        let cs = self.cs;
        let mut entries = (min_index + 1).max(self.reftable.len() as u64 * 2);
        let clusters = loop {
            let t = (entries * 8).div_ceil(cs);
            // Cover the file, the new table and generous room for the blocks placed after it.
            let covered_clusters = self.end / cs + t + 4 * self.per_block;
            let need = covered_clusters.div_ceil(self.per_block);
            if need <= entries {
                break t;
            }
            entries = need;
        };
        if clusters * cs > self.limits.max_table_bytes || clusters > u64::from(u32::MAX) {
            return Err(ImageError::LimitExceeded {
                what: "qcow2 refcount table",
                requested: clusters * cs,
                limit: self.limits.max_table_bytes,
            });
        }
        let start = self.reserve_end(clusters)?;
        match self.new_reftable.replace((start, clusters)) {
            // A table from an earlier growth in this operation was never pointed to: drop it.
            Some((off, n)) => {
                for c in off / cs..off / cs + n {
                    self.set_rc(c, 0, depth + 1)?;
                }
            }
            None => self.deferred.push((
                self.header.refcount_table_offset,
                u64::from(self.header.refcount_table_clusters) * cs,
            )),
        }
        self.reftable.resize((clusters * cs / 8) as usize, 0);
        self.reftable_dirty = true;
        for c in start / cs..start / cs + clusters {
            self.set_rc(c, 1, depth + 1)?;
        }
        Ok(())
    }

    /// Adds `delta` to a cluster's refcount, refusing underflow and overflow.
    pub(crate) fn adjust(&mut self, cluster: u64, delta: i64) -> Result<(), ImageError> {
        let cur = self.get_rc(cluster)?;
        let new = i128::from(cur) + i128::from(delta);
        if new < 0 {
            return Err(corrupt(format!(
                "refcount of cluster {cluster} would drop below zero"
            )));
        }
        if new > i128::from(self.rc_max) {
            return Err(ImageError::LimitExceeded {
                what: "qcow2 cluster refcount",
                requested: new as u64,
                limit: self.rc_max,
            });
        }
        self.set_rc(cluster, new as u64, 0)
    }

    /// Adds `delta` to every cluster overlapping the byte range.
    pub(crate) fn adjust_range(
        &mut self,
        off: u64,
        len: u64,
        delta: i64,
    ) -> Result<(), ImageError> {
        if len == 0 {
            return Ok(());
        }
        for c in off / self.cs..=(off + len - 1) / self.cs {
            self.adjust(c, delta)?;
        }
        Ok(())
    }

    /// Adds `delta` per reference to everything the L1 table `l1` references: its L2 tables
    /// and their data, compressed and preallocated zero clusters (the counting `check` does).
    pub(crate) fn adjust_l1_references(
        &mut self,
        l1: &[u64],
        delta: i64,
    ) -> Result<(), ImageError> {
        let bits = self.header.cluster_bits;
        let mut l2s: BTreeMap<u64, i64> = BTreeMap::new();
        for &e in l1 {
            let off = decode_l1_entry(e, bits, self.host_bound())?;
            if off != 0 {
                *l2s.entry(off).or_default() += delta;
            }
        }
        for (l2, d) in l2s {
            self.adjust(l2 / self.cs, d)?;
            for e in self.read_l2(l2)? {
                match decode_l2_entry(e, bits, self.header.version, self.host_bound())? {
                    Mapping::Unallocated | Mapping::Zero { host: 0 } => {}
                    Mapping::Zero { host } | Mapping::Data { host } => {
                        self.adjust(host / self.cs, d)?;
                    }
                    Mapping::Compressed { host, len } => self.adjust_range(host, len, d)?,
                }
            }
        }
        Ok(())
    }

    // ---- allocation -------------------------------------------------------------------

    pub(super) fn reserve_end(&mut self, clusters: u64) -> Result<u64, ImageError> {
        let start = self.end;
        let end = clusters
            .checked_mul(self.cs)
            .and_then(|n| start.checked_add(n))
            .filter(|e| *e <= MAX_HOST_OFFSET)
            .ok_or_else(|| corrupt("image file would exceed the largest qcow2 offset"))?;
        self.end = end;
        Ok(start)
    }

    /// Next cluster that may be allocated: a hole (refcount zero) inside the file as it was
    /// opened, else the next cluster at the end.
    pub(super) fn take_candidate(&mut self) -> Result<u64, ImageError> {
        if self.releasing {
            return Err(corrupt("allocation during release"));
        }
        while self.hole < self.orig_clusters {
            let c = self.hole;
            self.hole += 1;
            if self.get_rc(c)? == 0 {
                return Ok(c);
            }
        }
        Ok(self.reserve_end(1)? / self.cs)
    }

    /// Allocates `clusters` contiguous clusters (refcount one) and returns their offset.
    pub(crate) fn alloc_clusters(&mut self, clusters: u64) -> Result<u64, ImageError> {
        let first = if clusters == 1 {
            self.take_candidate()?
        } else {
            if self.releasing {
                return Err(corrupt("allocation during release"));
            }
            self.reserve_end(clusters)? / self.cs
        };
        for c in first..first + clusters {
            self.set_rc(c, 1, 0)?;
        }
        Ok(first * self.cs)
    }

    /// Writes dirty refcount blocks, then the refcount table (in place, or a grown one at
    /// its new place followed by the header switch), and syncs.
    pub(crate) fn commit_refcounts(&mut self) -> Result<(), ImageError> {
        let mut dirty: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(bi, _)| *bi)
            .collect();
        dirty.sort_unstable();
        for bi in dirty {
            let off = self.reftable[bi as usize] & !REFTABLE_RESERVED;
            if let Some(b) = self.blocks.get(&bi) {
                self.pwrite(&b.data, off)?;
            }
            if let Some(b) = self.blocks.get_mut(&bi) {
                b.dirty = false;
            }
        }
        if self.reftable_dirty {
            // New blocks are durable before any table entry points at them.
            self.sync()?;
            match self.new_reftable {
                Some((off, _)) => self.write_table(&self.reftable, off)?,
                None => self.write_table(&self.reftable, self.header.refcount_table_offset)?,
            }
            self.reftable_dirty = false;
        }
        self.sync()?;
        if let Some((off, clusters)) = self.new_reftable.take() {
            let mut b = [0u8; 12];
            put_u64(&mut b, 0, off);
            put_u32(&mut b, 8, clusters as u32);
            self.write_header_at(48, &b)?;
            self.header.refcount_table_offset = off;
            self.header.refcount_table_clusters = clusters as u32;
            tracing::debug!(path = %self.path.display(), clusters, "qcow2 refcount table grown");
        }
        Ok(())
    }

    /// Enters the down phase: releases the ranges deferred by earlier steps (the replaced
    /// refcount table). From now on nothing can be allocated.
    pub(crate) fn begin_release(&mut self) -> Result<(), ImageError> {
        if self.new_reftable.is_some() {
            return Err(corrupt("release before the refcount table switch"));
        }
        self.releasing = true;
        for (off, len) in std::mem::take(&mut self.deferred) {
            self.adjust_range(off, len, -1)?;
        }
        Ok(())
    }
}
