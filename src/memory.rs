//! Keeping the resident set to what a long-running follower uses.
//!
//! Most of an idle sidecar's RSS is not data (that is under 1 MiB) but pages of its own binary
//! that start-up touched: argument parsing, config validation, SDK set-up, and the kernel's
//! fault-around, which maps 16 neighbouring pages for every page faulted in. Once the process is
//! running, [`trim_code_pages`] unmaps the binary's code pages (`MADV_DONTNEED`) and turns
//! fault-around off for them (`MADV_RANDOM`), so from then on only the code the steady state runs
//! is resident. The pages stay in the page cache (shared and reclaimable), so this frees nothing
//! the kernel could not take back anyway; it makes RSS say what the process really needs.
//!
//! Only executable, non-writable mappings of the binary itself are touched: their content is the
//! file's, never modified (relocations go to other pages), so dropping and faulting them back in
//! is exact.

/// Unmaps the binary's code pages and stops fault-around for them; returns the bytes it covered.
/// Linux only; elsewhere, and on any error reading `/proc/self/maps`, it does nothing.
pub fn trim_code_pages() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let exe = exe.to_string_lossy().into_owned();
    let mut trimmed = 0;
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3).unwrap_or("");
        if path != exe || perms.as_bytes().get(1) != Some(&b'-') || perms.as_bytes().get(2) != Some(&b'x') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // SAFETY: a read-only, executable mapping of the binary: its pages hold the file's bytes,
        // so dropping them only makes the next access fault them back in from the page cache.
        let ok = unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM) == 0
                && libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) == 0
        };
        if ok {
            trimmed += end - start;
        }
    }
    trimmed
}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_keeps_the_code_working_and_covers_the_text() {
        fn work(n: u64) -> u64 {
            (0..n).map(|i| i.wrapping_mul(2_654_435_761) >> 7).sum()
        }
        let before = work(10_000);
        let trimmed = super::trim_code_pages();
        assert!(trimmed > 0, "the test binary's code is mapped from its file");
        // The code runs again from pages faulted back in.
        assert_eq!(work(10_000), before);
        let text = format!("{:?}", std::collections::BTreeMap::from([(1, "one")]));
        assert_eq!(text, "{1: \"one\"}");
    }
}
