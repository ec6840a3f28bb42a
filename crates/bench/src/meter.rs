//! CPU time per process over a phase: the tiers, nats-server, the PostgreSQL backends serving each
//! tier's database (by `pg_stat_activity`), the rest of PostgreSQL (WAL writer, checkpointer, other
//! databases' backends) and the bench itself. PostgreSQL's share is only seen when it runs on this
//! machine.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgConnection;

use crate::procfs;

/// CPU seconds of every process of interest at one moment, with what each process is.
#[derive(Debug, Default)]
pub struct Snapshot {
    cpu: HashMap<u32, (String, f64)>,
}

/// What is measured.
#[derive(Debug)]
pub struct Meter {
    /// Labelled processes: the tiers and nats-server.
    processes: Vec<(String, u32)>,
    /// The tiers' databases: (label, database name).
    databases: Vec<(String, String)>,
    /// Asks `pg_stat_activity` which backend serves which database.
    admin: Option<PgConnection>,
}

const PG_OTHER: &str = "pg_other";
const CLIENT: &str = "bench_client";

impl Meter {
    pub fn new(
        processes: Vec<(String, u32)>,
        databases: Vec<(String, String)>,
        admin: Option<PgConnection>,
    ) -> Meter {
        Meter {
            processes,
            databases,
            admin,
        }
    }

    async fn backends(&mut self) -> HashMap<u32, String> {
        let Some(admin) = self.admin.as_mut() else {
            return HashMap::new();
        };
        let names: Vec<String> = self.databases.iter().map(|(_, d)| d.clone()).collect();
        let query = sqlx::query_as::<_, (i32, String)>(
            "SELECT pid, datname::text FROM pg_stat_activity WHERE datname = ANY($1)",
        )
        .bind(names)
        .fetch_all(admin);
        let rows = match tokio::time::timeout(Duration::from_secs(5), query).await {
            Ok(Ok(rows)) => rows,
            _ => return HashMap::new(),
        };
        rows.into_iter()
            .filter_map(|(pid, database)| {
                let label = self
                    .databases
                    .iter()
                    .find(|(_, d)| *d == database)?
                    .0
                    .clone();
                Some((u32::try_from(pid).ok()?, label))
            })
            .collect()
    }

    pub async fn snapshot(&mut self) -> Snapshot {
        let mut cpu = HashMap::new();
        for (label, pid) in &self.processes {
            if let Some(seconds) = procfs::cpu_seconds(*pid) {
                cpu.insert(*pid, (label.clone(), seconds));
            }
        }
        let backends = self.backends().await;
        for (pid, seconds) in procfs::postgres_processes() {
            let label = backends.get(&pid).map_or(PG_OTHER, String::as_str);
            cpu.insert(pid, (label.to_owned(), seconds));
        }
        let me = std::process::id();
        if let Some(seconds) = procfs::cpu_seconds(me) {
            cpu.insert(me, (CLIENT.to_owned(), seconds));
        }
        Snapshot { cpu }
    }

    /// Milliseconds of CPU per unit of work between two snapshots, by label in a fixed order,
    /// with the total of everything but the bench client as `stack_total`. A process that started
    /// in between counts from zero.
    pub fn per_unit(&self, before: &Snapshot, after: &Snapshot, units: f64) -> Vec<(String, f64)> {
        let mut spent: HashMap<&str, f64> = HashMap::new();
        for (pid, (label, seconds)) in &after.cpu {
            let earlier = before.cpu.get(pid).map_or(0.0, |(_, s)| *s);
            *spent.entry(label.as_str()).or_default() += (seconds - earlier).max(0.0);
        }
        let mut order: Vec<String> = self.processes.iter().map(|(l, _)| l.clone()).collect();
        order.extend(self.databases.iter().map(|(l, _)| l.clone()));
        order.push(PG_OTHER.to_owned());
        let units = if units > 0.0 { units } else { 1.0 };
        let mut out: Vec<(String, f64)> = order
            .into_iter()
            .filter_map(|label| {
                let seconds = *spent.get(label.as_str())?;
                Some((label, seconds * 1000.0 / units))
            })
            .collect();
        let total = out.iter().map(|(_, ms)| ms).sum();
        out.push(("stack_total".to_owned(), total));
        if let Some(seconds) = spent.get(CLIENT) {
            out.push((CLIENT.to_owned(), seconds * 1000.0 / units));
        }
        out
    }
}
