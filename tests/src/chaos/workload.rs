//! The steady load of a fault run: field apps reporting at a fixed rate (open loop) and street
//! operators moving reported cases along (accept, dispatch, sign, report handled), each retrying as
//! a real client does. Every answer is written down in the [`Ledger`] the checker holds the tiers to.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Status};
use wangge_proto as pb;
use wangge_proto::CaseState;

use super::testbed::Testbed;
use crate::cluster::{CasesClient, ConsoleClient, DepartmentClient, FieldClient, as_actor};
use crate::fixtures::{STREET_OPERATOR, client_id, report};

/// How long a client waits for an answer before it counts the call as failed (and retries).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a field app keeps retrying a report once the run is over before it gives up on it.
const GIVE_UP_AFTER_STOP: Duration = Duration::from_secs(20);
/// One field app per grid: each its own connection, grid worker and subject on the bus.
const GRIDS: [&str; 4] = [
    "350205002006001",
    "350205002007001",
    "350205002008001",
    "350205002009001",
];
/// Every how-many-th acknowledged report the street console takes up.
const CONSOLE_SHARE: usize = 3;

/// A report the village acknowledged.
#[derive(Debug, Clone)]
pub struct AckedReport {
    pub client_id: String,
    pub case_id: String,
    pub at: Instant,
}

/// A console step the street acknowledged, with the case version it produced.
#[derive(Debug, Clone)]
pub struct AckedStep {
    pub case_id: String,
    pub version: u64,
    pub step: &'static str,
    pub at: Instant,
}

/// What the callers were told: acknowledged reports and steps, and the errors returned.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Entries>,
}

/// A copy of the ledger at one moment.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    pub reports: Vec<AckedReport>,
    pub steps: Vec<AckedStep>,
    /// Error answers by call and code, e.g. `report Unavailable`; a client-side timeout counts as
    /// `DeadlineExceeded`.
    pub errors: BTreeMap<String, u64>,
    /// Reports never acknowledged though retried until well after the run.
    pub abandoned: u64,
}

impl Entries {
    pub fn errors_returned(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl Ledger {
    pub fn snapshot(&self) -> Entries {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic elsewhere leaves whole entries behind: keep going with them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, call: &str, code: Code) {
        *self
            .lock()
            .errors
            .entry(format!("{call} {code:?}"))
            .or_default() += 1;
    }
}

/// Worth sending again with the same client id: the tier may be restarting, paused or cut off.
/// RESOURCE_EXHAUSTED is how tonic reports an HTTP/2 GOAWAY with ENHANCE_YOUR_CALM: a tier that
/// was paused finds the requests its clients gave up on meanwhile reset, and past 20 such resets
/// h2 closes the connection.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// A call with the client's deadline; a timeout becomes DEADLINE_EXCEEDED.
async fn call<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("client deadline")),
    }
}

/// How much load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Reports per second, over all field apps.
    pub rate: f64,
    /// Street operators, each with its own share of the cases.
    pub operators: usize,
}

/// The running load; [`Workload::stop`] ends it.
pub struct Workload {
    ledger: Arc<Ledger>,
    field: FieldClient,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Workload {
    /// Starts reporting and operating at once. `department` is the street department cases go to.
    pub fn start(bed: &Testbed, ledger: Arc<Ledger>, load: Load, department: String) -> Workload {
        let clients = &bed.clients;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut inboxes = Vec::new();
        for _ in 0..load.operators.max(1) {
            let (to_operator, inbox) = mpsc::unbounded_channel();
            inboxes.push(to_operator);
            let operator = Operator {
                cases: clients.cases(wangge_proto::Tier::Street),
                console: clients.street_console(),
                departments: clients.street_departments(),
                handler: format!("dh-{department}"),
                department: department.clone(),
                ledger: ledger.clone(),
            };
            tasks.spawn(operator.run(inbox, stop.clone()));
        }
        let period = Duration::from_secs_f64(GRIDS.len() as f64 / load.rate.max(0.1));
        for (app, grid) in GRIDS.into_iter().enumerate() {
            // Each field app on its own connection, as separate phones are (a clone of a channel
            // would share one).
            let own = tonic::transport::Channel::from_shared(format!(
                "http://{}",
                bed.village.process.addr
            ))
            .expect("a valid URI")
            .connect_lazy();
            let own = crate::identity::observed(own);
            let app = FieldApp {
                field: FieldClient::new(own),
                grid,
                worker: format!("gw-{grid}"),
                ledger: ledger.clone(),
                operators: inboxes.clone(),
                offset: app,
            };
            tasks.spawn(app.run(period, stop.clone(), tasks.clone()));
        }
        Workload {
            ledger,
            field: FieldClient::new(clients.village.clone()),
            stop,
            tasks,
        }
    }

    /// Sends one report (retrying like the others) and returns how it ended, for the record.
    pub async fn report_once(&self, request: pb::ReportCaseRequest) -> Result<pb::Case, Status> {
        let app = FieldApp {
            field: self.field.clone(),
            grid: GRIDS[0],
            worker: format!("gw-{}", GRIDS[0]),
            ledger: self.ledger.clone(),
            operators: Vec::new(),
            offset: 0,
        };
        app.submit(request, 1, self.stop.clone()).await
    }

    /// Stops new reports and steps, and waits until every report in flight is acknowledged or
    /// given up.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Workload {
    /// A run that failed half-way must not leave field apps retrying against a system that is gone.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One phone: reports in its grid at a fixed pace, whatever happened to earlier reports.
struct FieldApp {
    field: FieldClient,
    grid: &'static str,
    worker: String,
    ledger: Arc<Ledger>,
    operators: Vec<mpsc::UnboundedSender<String>>,
    offset: usize,
}

impl FieldApp {
    async fn run(self, period: Duration, stop: CancellationToken, tasks: TaskTracker) {
        let app = Arc::new(self);
        // Apps start spread over one period, so the reports come evenly.
        let start =
            tokio::time::Instant::now() + period.mul_f64(app.offset as f64 / GRIDS.len() as f64);
        let mut ticker = tokio::time::interval_at(start, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0.. {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let (app, stop) = (app.clone(), stop.clone());
            tasks.spawn(async move {
                let _ = app.submit(report(&client_id(), app.grid), n, stop).await;
            });
        }
    }

    /// Sends a report until the village acknowledges it, retrying with the same client id.
    async fn submit(
        &self,
        request: pb::ReportCaseRequest,
        n: usize,
        stop: CancellationToken,
    ) -> Result<pb::Case, Status> {
        let mut backoff = Duration::from_millis(200);
        let mut give_up: Option<Instant> = None;
        loop {
            let answer = call(
                self.field
                    .clone()
                    .report_case(as_actor(&self.worker, request.clone())),
            )
            .await;
            match answer {
                Ok(case) => {
                    let acked = AckedReport {
                        client_id: request.client_id.clone(),
                        case_id: case.id.clone(),
                        at: Instant::now(),
                    };
                    self.ledger.lock().reports.push(acked);
                    if n.is_multiple_of(CONSOLE_SHARE) && !self.operators.is_empty() {
                        let operator = &self.operators[(n / CONSOLE_SHARE) % self.operators.len()];
                        let _ = operator.send(case.id.clone());
                    }
                    return Ok(case);
                }
                Err(status) => {
                    self.ledger.error("report", status.code());
                    if !retryable(status.code()) {
                        return Err(status);
                    }
                    if stop.is_cancelled() {
                        let give_up =
                            *give_up.get_or_insert_with(|| Instant::now() + GIVE_UP_AFTER_STOP);
                        if Instant::now() > give_up {
                            self.ledger.lock().abandoned += 1;
                            return Err(status);
                        }
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// A street operator with the department handler at hand: takes each of its cases one step further
/// per turn until it is handled.
struct Operator {
    cases: CasesClient,
    console: ConsoleClient,
    departments: DepartmentClient,
    handler: String,
    department: String,
    ledger: Arc<Ledger>,
}

/// What became of a turn on a case.
enum Turn {
    /// A step was taken; the next one follows after [`STEP_PAUSE`].
    Stepped,
    /// The street does not hold the case yet (its link or the village's may be cut).
    Absent,
    /// The lookup or the step failed.
    Failed,
    /// Handled (or in a state the operator leaves alone).
    Done,
}

/// A case in an operator's hands.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    due: Instant,
    /// Keeps cases due at the same instant in arrival order.
    key: u64,
    case_id: String,
    failed: u32,
    absent: u32,
}

/// Pause between two turns on the same case.
const STEP_PAUSE: Duration = Duration::from_millis(300);
/// Turns on one case that end in an error before the operator leaves it.
const MAX_FAILED_TURNS: u32 = 40;
/// Longest wait before looking again for a case the street does not hold: during a long cut
/// thousands of cases wait, and looking for each every second would be a load of its own.
const MAX_ABSENT_WAIT: Duration = Duration::from_secs(30);

impl Operator {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<String>, stop: CancellationToken) {
        // Earliest due first.
        let mut due: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
        let mut next_key = 0u64;
        loop {
            let wake = due.peek().map(|Reverse(pending)| pending.due);
            tokio::select! {
                _ = stop.cancelled() => return,
                case = inbox.recv() => match case {
                    Some(case_id) => {
                        next_key += 1;
                        due.push(Reverse(Pending {
                            due: Instant::now() + STEP_PAUSE,
                            key: next_key,
                            case_id,
                            failed: 0,
                            absent: 0,
                        }));
                    }
                    None => return,
                },
                _ = sleep_until(wake) => {
                    let Some(Reverse(mut pending)) = due.pop() else { continue };
                    let after = match self.turn(&pending.case_id).await {
                        Turn::Done => continue,
                        Turn::Stepped => STEP_PAUSE,
                        Turn::Absent => {
                            pending.absent += 1;
                            (Duration::from_secs(1) * 2u32.pow(pending.absent.min(5))).min(MAX_ABSENT_WAIT)
                        }
                        Turn::Failed if pending.failed < MAX_FAILED_TURNS => {
                            pending.failed += 1;
                            STEP_PAUSE * 3
                        }
                        Turn::Failed => continue,
                    };
                    pending.due = Instant::now() + after;
                    due.push(Reverse(pending));
                }
            }
        }
    }

    /// Looks the case up at the street and takes the step its state calls for.
    async fn turn(&mut self, case_id: &str) -> Turn {
        let lookup = pb::GetCaseRequest {
            case_id: case_id.to_owned(),
        };
        let case = match call(self.cases.get_case(lookup)).await {
            Ok(case) => case,
            // Not at the street yet (its link may be cut): look again later.
            Err(status) if status.code() == Code::NotFound => return Turn::Absent,
            Err(_) => return Turn::Failed,
        };
        let action = |note: &str| pb::CaseActionRequest {
            case_id: case_id.to_owned(),
            note: note.to_owned(),
            ..Default::default()
        };
        let by_department = |note: &str| pb::DepartmentActionRequest {
            case_id: case_id.to_owned(),
            department_code: self.department.clone(),
            note: note.to_owned(),
            ..Default::default()
        };
        let (step, answer) = match case.state() {
            CaseState::Reported => (
                "accept",
                call(
                    self.console
                        .accept_case(as_actor(STREET_OPERATOR, action("属实"))),
                )
                .await,
            ),
            CaseState::Accepted => {
                let dispatch = pb::DispatchCaseRequest {
                    case_id: case_id.to_owned(),
                    department_code: self.department.clone(),
                    note: "请尽快处置".to_owned(),
                };
                (
                    "dispatch",
                    call(
                        self.console
                            .dispatch_case(as_actor(STREET_OPERATOR, dispatch)),
                    )
                    .await,
                )
            }
            CaseState::Dispatched => (
                "sign",
                call(
                    self.departments
                        .sign_case(as_actor(&self.handler, by_department(""))),
                )
                .await,
            ),
            CaseState::InProgress => (
                "report handled",
                call(
                    self.departments
                        .report_handled(as_actor(&self.handler, by_department("已处置"))),
                )
                .await,
            ),
            _ => return Turn::Done,
        };
        match answer {
            Ok(case) => {
                self.ledger.lock().steps.push(AckedStep {
                    case_id: case.id.clone(),
                    version: case.version,
                    step,
                    at: Instant::now(),
                });
                if case.state() == CaseState::Handled {
                    Turn::Done
                } else {
                    Turn::Stepped
                }
            }
            Err(status) => {
                self.ledger.error("step", status.code());
                Turn::Failed
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
