//! What the measured system costs, read from Linux's /proc (proc(5)):
//! unshared memory of processes by name, and CPU time of process trees.
//! Also raises this process's own open-file limit.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;

/// Memory of a set of processes, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub processes: u64,
    /// Private_Clean + Private_Dirty: pages no other process maps.
    pub private_bytes: u64,
    pub rss_bytes: u64,
    /// Proportional set size: shared pages divided among their users.
    pub pss_bytes: u64,
}

/// Sums the memory of every process whose `comm` is one of `names` and,
/// if `within` is given, that descends from (or is) one of those PIDs.
/// Processes that vanish while being read are skipped.
pub fn memory_by_name(proc_root: &Path, names: &[String], within: Option<&[u32]>) -> io::Result<Memory> {
    let allowed = match within {
        Some(roots) => Some(descendants(&process_table(proc_root)?, roots)?),
        None => None,
    };
    let mut total = Memory::default();
    for pid in pids(proc_root)? {
        if allowed.as_ref().is_some_and(|a| !a.contains(&pid)) {
            continue;
        }
        let dir = proc_root.join(pid.to_string());
        let Ok(comm) = fs::read_to_string(dir.join("comm")) else { continue };
        if !names.iter().any(|n| n == comm.trim_end_matches('\n')) {
            continue;
        }
        // smaps_rollup (Linux 4.14) is the sum smaps would give; older
        // kernels only have smaps.
        let smaps = fs::read_to_string(dir.join("smaps_rollup")).or_else(|_| fs::read_to_string(dir.join("smaps")));
        let Ok(smaps) = smaps else { continue };
        let m = parse_smaps(&smaps);
        total.processes += 1;
        total.private_bytes += m.private_bytes;
        total.rss_bytes += m.rss_bytes;
        total.pss_bytes += m.pss_bytes;
    }
    Ok(total)
}

/// Sums `Private_Clean`, `Private_Dirty`, `Rss` and `Pss` lines (in kB)
/// over all mappings of a smaps or smaps_rollup file.
pub fn parse_smaps(text: &str) -> Memory {
    let mut m = Memory::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else { continue };
        let kb = || rest.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) * 1024;
        match key {
            "Private_Clean" | "Private_Dirty" => m.private_bytes += kb(),
            "Rss" => m.rss_bytes += kb(),
            "Pss" => m.pss_bytes += kb(),
            _ => {}
        }
    }
    m
}

/// CPU time of process trees at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    /// utime + stime + cutime + cstime over every living process in the
    /// trees, in clock ticks.
    pub ticks: u64,
    pub processes: u64,
}

impl Cpu {
    pub fn seconds_since(&self, before: &Cpu) -> f64 {
        self.ticks.saturating_sub(before.ticks) as f64 / clock_ticks_per_second() as f64
    }
}

/// The CPU time of each root and all its descendants (found by the ppid
/// field of every /proc/<pid>/stat). cutime/cstime hold what reaped
/// children used, so short-lived workers (Postfix's smtpd, cleanup, …)
/// count as long as their parent is in a tree.
pub fn tree_cpu(proc_root: &Path, roots: &[u32]) -> io::Result<Cpu> {
    let table = process_table(proc_root)?;
    let tree = descendants(&table, roots)?;
    let mut cpu = Cpu::default();
    for stat in tree.iter().filter_map(|pid| table.get(pid)) {
        cpu.ticks += stat.ticks;
        cpu.processes += 1;
    }
    Ok(cpu)
}

/// The stat of every process that could be read.
fn process_table(proc_root: &Path) -> io::Result<BTreeMap<u32, Stat>> {
    let mut table = BTreeMap::new();
    for pid in pids(proc_root)? {
        if let Ok(text) = fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))
            && let Some(stat) = parse_stat(&text)
        {
            table.insert(pid, stat);
        }
    }
    Ok(table)
}

/// `roots` and every process below them; a root that does not exist is
/// an error (a wrong PID would silently measure nothing).
fn descendants(table: &BTreeMap<u32, Stat>, roots: &[u32]) -> io::Result<BTreeSet<u32>> {
    if let Some(missing) = roots.iter().find(|r| !table.contains_key(r)) {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no process {missing}")));
    }
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (&pid, stat) in table {
        children.entry(stat.ppid).or_default().push(pid);
    }
    let mut seen = BTreeSet::new();
    let mut todo = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if seen.insert(pid) {
            todo.extend(children.get(&pid).into_iter().flatten());
        }
    }
    Ok(seen)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// utime + stime + cutime + cstime.
    pub ticks: u64,
}

/// proc(5) /proc/pid/stat: `pid (comm) state ppid …`, utime, stime,
/// cutime, cstime are fields 14–17. comm may hold spaces and parentheses,
/// so fields are counted from the last ")".
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3).copied();
    let ppid = field(4)?.parse().ok()?;
    let mut ticks = 0u64;
    for n in 14..=17 {
        // cutime and cstime are signed in the kernel; never negative in practice.
        ticks += field(n)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some(Stat { ppid, ticks })
}

fn pids(proc_root: &Path) -> io::Result<Vec<u32>> {
    Ok(fs::read_dir(proc_root)?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
}

/// sysconf(_SC_CLK_TCK): the unit of the times in /proc/pid/stat
/// (100 on every common Linux configuration).
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (10,000 IMAP
/// connections need 10,000 descriptors). Returns the new soft limit.
pub fn raise_open_file_limit() -> io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_sums() {
        let text = "55a4c0a2e000-7ffd3e1f5000 ---p 00000000 00:00 0                          [rollup]\n\
                    Rss:                5120 kB\nPss:                2048 kB\nPss_Dirty:          1024 kB\n\
                    Shared_Clean:       3072 kB\nPrivate_Clean:       512 kB\nPrivate_Dirty:      1024 kB\n";
        let m = parse_smaps(text);
        assert_eq!(m.private_bytes, 1536 * 1024);
        assert_eq!(m.rss_bytes, 5120 * 1024);
        assert_eq!(m.pss_bytes, 2048 * 1024);
    }

    #[test]
    fn stat_with_awkward_comm() {
        let text = "4242 (imap (x) y) S 17 4242 4242 0 -1 4194560 1000 0 0 0 250 50 7 3 20 0 1 0 100 0 0 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(text), Some(Stat { ppid: 17, ticks: 250 + 50 + 7 + 3 }));
        assert_eq!(parse_stat("1 (init) S"), None);
    }

    #[test]
    fn own_process_tree() {
        let me = std::process::id();
        let cpu = tree_cpu(Path::new("/proc"), &[me]).expect("own tree");
        assert!(cpu.processes >= 1);
        assert!(tree_cpu(Path::new("/proc"), &[u32::MAX]).is_err());
        let comm = fs::read_to_string(format!("/proc/{me}/comm")).expect("comm");
        let names = [comm.trim().to_owned()];
        let mem = memory_by_name(Path::new("/proc"), &names, None).expect("memory");
        assert!(mem.processes >= 1 && mem.rss_bytes > 0);
        let mine = memory_by_name(Path::new("/proc"), &names, Some(&[me])).expect("memory");
        assert_eq!(mine.processes, 1);
        assert!(memory_by_name(Path::new("/proc"), &names, Some(&[u32::MAX])).is_err());
        assert!(clock_ticks_per_second() >= 1);
    }
}
