//! The invoice store's behaviour (the compliance records the DIAN pipeline works on),
//! written once and run on both backends: the data dir's SQLite and a throwaway
//! PostgreSQL (tests/common/pg.rs). Then what only Postgres does: boxes sharing one
//! company's invoices, each claimed by one box at a time (SKIP LOCKED, leases kept by
//! heartbeats), and a box that lost its lease recording nothing.
//!
//! Time is the store's injected clock ([`WallClock::advance`]), never a sleep. The
//! store's calls are synchronous (Postgres's wait in place), hence multi-thread runtimes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::pg;
use syncctl::protocol::{LocalInvoice, Status};
use syncctl::store::pg_invoices::PgInvoices;
use syncctl::store::queue::JobQueue;
use syncctl::store::{Change, Invoices, Store, WallClock};

const LEASE: i64 = 30_000;
const PREFIX: &str = "SETP";
const START: u64 = 990_000_001;

/// Where a test's invoices live; opens handles on them (a "box" each, for Postgres).
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres {
        url: String,
        _server: std::sync::Arc<pg::Postgres>,
    },
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Db {
    /// None: Postgres is not installed and not required (the harness said so loudly).
    fn new(backend: Backend) -> Option<Self> {
        Some(match backend {
            Backend::Sqlite => Db::Sqlite(tempfile::tempdir().unwrap()),
            Backend::Postgres => {
                let server = pg::server()?;
                Db::Postgres {
                    url: server.database(),
                    _server: server,
                }
            }
        })
    }

    /// A handle whose leases are `owner`'s, on `company`, reading time from `clock`.
    async fn open_company(&self, owner: &str, company: &str, clock: &WallClock) -> Invoices {
        match self {
            Db::Sqlite(dir) => {
                Invoices::sqlite(Store::open_with_clock(dir.path(), clock.clone()).unwrap())
            }
            Db::Postgres { url, .. } => {
                let q = JobQueue::postgres(url, owner, company, clock.clone())
                    .await
                    .unwrap();
                Invoices::postgres(PgInvoices::of(q.postgres_handle().unwrap()), clock.clone())
            }
        }
    }

    async fn open(&self, owner: &str, clock: &WallClock) -> Invoices {
        self.open_company(owner, "default", clock).await
    }

    /// What takes over after the box working on the invoices died mid-send: on SQLite
    /// the same data dir restarted (its start-up recovery), on Postgres another box once
    /// the dead one's leases ran out.
    async fn take_over(&self, clock: &WallClock) -> Invoices {
        match self {
            Db::Sqlite(_) => {
                let i = self.open("box-a", clock).await;
                i.recover_sending().unwrap();
                i
            }
            Db::Postgres { .. } => {
                clock.advance(LEASE + 1);
                self.open("box-b", clock).await
            }
        }
    }
}

fn ingest(i: &Invoices, id: &str) -> bool {
    i.ingest_invoice(
        &LocalInvoice::example(id, "invoice"),
        "2026-12-01",
        PREFIX,
        START,
        None,
    )
    .unwrap()
}

fn claim(i: &Invoices, limit: usize) -> Vec<String> {
    let now = i.now_ms();
    i.claim_due(now, limit, &[], false, LEASE)
        .unwrap()
        .into_iter()
        .map(|r| r.stripe_id)
        .collect()
}

fn status(i: &Invoices, id: &str) -> Status {
    i.invoice(id).unwrap().unwrap().status
}

fn validated<'a>() -> Change<'a> {
    Change {
        to: Some(Status::Validated),
        next_at_ms: Some(None),
        message: "DIAN accepted it",
        actor: "engine",
        alegra_id: Some("1"),
        cufe: Some("cufe-1"),
        ..Default::default()
    }
}

/// Runs each behaviour (an `async fn(Backend)` below) as one test per backend.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $case() { super::$case(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $case() { super::$case(super::Backend::Postgres).await })*
        }
    };
}

on_both_backends!(
    a_paid_invoice_is_recorded_once_with_the_next_number,
    a_repeated_event_id_records_nothing,
    a_claimed_invoice_moves_through_the_machine_with_its_history,
    a_send_cut_short_is_read_at_alegra_before_anything_is_sent_again,
    an_outage_falls_back_invoices_but_never_credit_notes,
    an_operator_retry_of_a_failed_invoice_makes_it_due,
    a_search_finds_a_substring_not_a_pattern,
);

/// The invoice search (`GET /api/v1/compliance?q=`) finds the text as typed, in any case, in
/// the number, the Stripe id or the CUFE: `_` and `%` are characters, not a LIKE
/// pattern's wildcards (every Stripe id has a `_`), as on either backend.
async fn a_search_finds_a_substring_not_a_pattern(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let i = db.open("box-a", &WallClock::default()).await;
    for id in ["in_1", "inX1", "in_12"] {
        assert!(ingest(&i, id));
    }
    let found = |search: &str| -> Vec<String> {
        let mut ids: Vec<String> = i
            .invoices(None, search, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.stripe_id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(found("n_1"), ["in_1", "in_12"]);
    assert_eq!(found(" IN_1 "), ["in_1", "in_12"]);
    assert_eq!(found("setp990000002"), ["inX1"]);
    assert_eq!(found("%"), Vec::<String>::new());
    assert_eq!(found("_"), ["in_1", "in_12"]);
    assert_eq!(found(""), ["inX1", "in_1", "in_12"]);
}

async fn a_paid_invoice_is_recorded_once_with_the_next_number(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let i = db.open("box-a", &WallClock::default()).await;
    assert_eq!(i.next_number_seq().unwrap(), 0);
    assert!(ingest(&i, "in_1"));
    assert!(ingest(&i, "in_2"));
    assert!(
        !ingest(&i, "in_1"),
        "the same invoice again records nothing"
    );
    assert_eq!(i.invoice("in_1").unwrap().unwrap().number, "SETP990000001");
    assert_eq!(
        i.invoice("SETP990000002").unwrap().unwrap().stripe_id,
        "in_2"
    );
    assert_eq!(i.next_number_seq().unwrap(), 2);
    assert_eq!(i.invoice_rows().unwrap(), 2);
    let h = i.invoice_history("in_1").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].to, "PENDING");
    let counts = i.compliance_counts().unwrap();
    assert_eq!(counts.total, 2);
    assert!(counts.by_status.contains(&(Status::Pending, 2)));
}

async fn a_repeated_event_id_records_nothing(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let i = db.open("box-a", &WallClock::default()).await;
    let ev = Some(("evt_1", "invoice.paid", "webhook"));
    let inv = LocalInvoice::example("in_1", "invoice");
    assert!(
        i.ingest_invoice(&inv, "2026-12-01", PREFIX, START, ev)
            .unwrap()
    );
    let other = LocalInvoice::example("in_2", "invoice");
    assert!(
        !i.ingest_invoice(&other, "2026-12-01", PREFIX, START, ev)
            .unwrap(),
        "an event id seen before records nothing"
    );
    assert!(i.invoice("in_2").unwrap().is_none());
}

async fn a_claimed_invoice_moves_through_the_machine_with_its_history(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let i = db.open("box-a", &WallClock::default()).await;
    ingest(&i, "in_1");
    assert_eq!(claim(&i, 10), ["in_1"]);
    assert_eq!(i.begin_send_leased("in_1").unwrap(), Some(1));
    assert!(i.invoice("in_1").unwrap().unwrap().sending);
    assert!(i.change_leased("in_1", &validated()).unwrap());
    i.release("in_1").unwrap();
    let r = i.invoice("in_1").unwrap().unwrap();
    assert_eq!(
        (r.status, r.sending, r.cufe.as_deref(), r.attempts),
        (Status::Validated, false, Some("cufe-1"), 1)
    );
    assert!(r.validated_at_ms.is_some());
    assert_eq!(i.invoice("cufe-1").unwrap().unwrap().stripe_id, "in_1");
    assert_eq!(
        i.invoice_of_alegra_document("1")
            .unwrap()
            .unwrap()
            .stripe_id,
        "in_1"
    );
    let h: Vec<String> = i
        .invoice_history("in_1")
        .unwrap()
        .into_iter()
        .map(|h| format!("{}>{}", h.from.unwrap_or_default(), h.to))
        .collect();
    assert_eq!(h, [">PENDING", "PENDING>VALIDATED"]);
    assert!(claim(&i, 10).is_empty(), "nothing left to do");
    assert_eq!(i.next_invoice_due(false).unwrap(), None);
    let found = i.invoices(Some(Status::Validated), "setp99", 10).unwrap();
    assert_eq!(found.len(), 1);
}

async fn a_send_cut_short_is_read_at_alegra_before_anything_is_sent_again(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let a = db.open("box-a", &clock).await;
    ingest(&a, "in_1");
    assert_eq!(claim(&a, 10), ["in_1"]);
    assert_eq!(a.begin_send_leased("in_1").unwrap(), Some(1));
    // The box dies here: the request may have reached Alegra, its answer never recorded.
    drop(a);
    let b2 = db.take_over(&clock).await;
    let now = b2.now_ms();
    let due = b2.claim_due(now, 10, &[], false, LEASE).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].status, due[0].sending, due[0].attempts),
        (Status::Unknown, false, 1),
        "read at Alegra first, never sent blind"
    );
    let h = b2.invoice_history("in_1").unwrap();
    assert_eq!(h.last().unwrap().to, "UNKNOWN");
}

async fn an_outage_falls_back_invoices_but_never_credit_notes(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let i = db.open("box-a", &clock).await;
    ingest(&i, "in_a");
    i.ingest_invoice(
        &LocalInvoice::example("cn_1", "credit_note"),
        "2026-12-01",
        PREFIX,
        START,
        None,
    )
    .unwrap();
    assert_eq!(i.enter_fallback("outage").unwrap(), 1);
    assert_eq!(status(&i, "in_a"), Status::Fallback);
    assert_eq!(status(&i, "cn_1"), Status::Pending);
    assert!(i.unfinished_outage().unwrap().is_some());
    assert_eq!(
        claim(&i, 10),
        ["cn_1"],
        "held in FALLBACK until DIAN is back"
    );
    assert!(i.change_leased("cn_1", &validated()).unwrap());
    i.release("cn_1").unwrap();
    let deadline = clock.now_ms() + 48 * 3_600_000;
    assert_eq!(i.restore_fallback(deadline, "DIAN is back").unwrap(), 1);
    assert_eq!(i.unfinished_outage().unwrap(), None);
    let r = i.invoice("in_a").unwrap().unwrap();
    assert_eq!((r.deadline_at_ms, r.contingency), (Some(deadline), true));
    assert_eq!(claim(&i, 10), ["in_a"]);
}

async fn an_operator_retry_of_a_failed_invoice_makes_it_due(b: Backend) {
    let Some(db) = Db::new(b) else { return };
    let clock = WallClock::default();
    let i = db.open("box-a", &clock).await;
    ingest(&i, "in_1");
    assert_eq!(claim(&i, 10), ["in_1"]);
    i.begin_send_leased("in_1").unwrap().unwrap();
    let failed = Change {
        to: Some(Status::Failed),
        next_at_ms: Some(None),
        code: Some("EPR500"),
        message: "gave up",
        actor: "engine",
        ..Default::default()
    };
    assert!(i.change_leased("in_1", &failed).unwrap());
    i.release("in_1").unwrap();
    assert_eq!(i.invoices_in(Status::Failed).unwrap(), ["in_1"]);
    let rec = i.invoice("in_1").unwrap().unwrap();
    syncctl::engine::compliance::operator_retry(&i, &rec, "ana").unwrap();
    let r = i.invoice("in_1").unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (Status::Unknown, 0));
    assert_eq!(claim(&i, 10), ["in_1"]);
}

// What only the shared store does: several boxes on one company's invoices.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boxes_claiming_at_once_never_get_the_same_invoice() {
    let Some(db) = Db::new(Backend::Postgres) else {
        return;
    };
    let clock = WallClock::default();
    let a = db.open("box-a", &clock).await;
    let b = db.open("box-b", &clock).await;
    for n in 0..200 {
        ingest(&a, &format!("in_{n:03}"));
    }
    // Both boxes claim in small batches at the same time until nothing is left.
    let (ta, tb) = (a.clone(), b.clone());
    // (Each call waits in place on a thread of its own: the two claim at once.)
    let take = |i: Invoices| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            // Bounded: a claim that took held invoices again would never run dry.
            for _ in 0..100 {
                let now = i.now_ms();
                let batch = i.claim_due(now, 7, &[], false, LEASE).unwrap();
                if batch.is_empty() {
                    break;
                }
                got.extend(batch.into_iter().map(|r| r.stripe_id));
            }
            got
        })
    };
    let (got_a, got_b) = tokio::join!(take(ta), take(tb));
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    let mut all: Vec<&String> = got_a.iter().chain(&got_b).collect();
    assert_eq!(all.len(), 200, "a {} + b {}", got_a.len(), got_b.len());
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200, "an invoice was claimed by both boxes");
    // Each box may send only what it holds.
    let held_by_a: HashSet<&String> = got_a.iter().collect();
    for id in &got_b {
        assert!(!held_by_a.contains(id));
        assert_eq!(a.begin_send_leased(id).unwrap(), None, "{id} is b's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_whose_lease_ran_out_cannot_record_a_send_or_its_outcome() {
    let Some(db) = Db::new(Backend::Postgres) else {
        return;
    };
    let clock = WallClock::default();
    let a = db.open("box-a", &clock).await;
    let b = db.open("box-b", &clock).await;
    ingest(&a, "in_1");
    ingest(&a, "in_2");
    assert_eq!(claim(&a, 10), ["in_1", "in_2"]);
    // a stalls past its lease on both.
    clock.advance(LEASE + 1);
    // in_1: nobody took it yet; still, a's lease is over, so a may not send it.
    assert_eq!(a.begin_send_leased("in_1").unwrap(), None);
    assert!(!a.change_leased("in_1", &validated()).unwrap());
    assert!(!a.postpone_leased("in_1", 1000, "later").unwrap());
    assert!(a.heartbeat(&["in_1".to_owned()], LEASE).unwrap().is_empty());
    // in_2: b took it over; a's late writes change nothing of b's.
    assert_eq!(claim(&b, 10), ["in_1", "in_2"]);
    assert_eq!(b.begin_send_leased("in_2").unwrap(), Some(1));
    assert!(!a.change_leased("in_2", &validated()).unwrap());
    let r = b.invoice("in_2").unwrap().unwrap();
    assert_eq!((r.status, r.sending), (Status::Pending, true));
    assert_eq!(b.invoice_history("in_2").unwrap().len(), 1);
    assert!(b.change_leased("in_2", &validated()).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_keeps_an_invoice_and_a_release_gives_it_back() {
    let Some(db) = Db::new(Backend::Postgres) else {
        return;
    };
    let clock = WallClock::default();
    let a = db.open("box-a", &clock).await;
    let b = db.open("box-b", &clock).await;
    ingest(&a, "in_1");
    assert_eq!(claim(&a, 10), ["in_1"]);
    assert!(claim(&b, 10).is_empty(), "a holds it");
    // Another box's invoice is not "due now" for b: it waits for the lease's end.
    assert!(b.next_invoice_due(false).unwrap().unwrap() > clock.now_ms() + LEASE / 2);
    clock.advance(LEASE * 2 / 3);
    assert_eq!(a.heartbeat(&["in_1".to_owned()], LEASE).unwrap(), ["in_1"]);
    clock.advance(LEASE * 2 / 3);
    assert!(claim(&b, 10).is_empty(), "the heartbeat kept it");
    assert_eq!(a.begin_send_leased("in_1").unwrap(), Some(1));
    // A send still marked is not given back: it is b's to read once a's lease is over.
    a.release("in_1").unwrap();
    assert!(claim(&b, 10).is_empty());
    assert!(
        a.postpone_leased("in_1", 0, "waiting: Alegra busy")
            .unwrap()
    );
    a.release("in_1").unwrap();
    assert_eq!(claim(&b, 10), ["in_1"], "given back, taken by b at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boxes_taking_one_paid_invoice_at_once_give_it_one_number() {
    let Some(db) = Db::new(Backend::Postgres) else {
        return;
    };
    let clock = WallClock::default();
    let a = db.open("box-a", &clock).await;
    let b = db.open("box-b", &clock).await;
    let run = |i: Invoices| {
        tokio::spawn(async move {
            (0..60)
                .filter(|n| ingest(&i, &format!("in_{n:02}")))
                .count()
        })
    };
    let (na, nb) = tokio::join!(run(a.clone()), run(b.clone()));
    assert_eq!(na.unwrap() + nb.unwrap(), 60, "each invoice recorded once");
    // Numbers 1..=60 exactly: none given twice, no gap left by a lost race.
    let mut numbers: Vec<String> = a
        .invoices(None, "", 100)
        .unwrap()
        .into_iter()
        .map(|r| r.number)
        .collect();
    numbers.sort();
    let want: Vec<String> = (0..60).map(|n| format!("{PREFIX}{}", START + n)).collect();
    assert_eq!(numbers, want);
    assert_eq!(a.next_number_seq().unwrap(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_companies_on_one_database_never_see_each_others_invoices() {
    let Some(db) = Db::new(Backend::Postgres) else {
        return;
    };
    let clock = WallClock::default();
    let co1 = db.open_company("box-a", "co1", &clock).await;
    let co2 = db.open_company("box-a", "co2", &clock).await;
    assert!(ingest(&co1, "in_1"));
    assert!(
        ingest(&co2, "in_1"),
        "the same Stripe id in another company"
    );
    assert_eq!(
        co2.invoice("in_1").unwrap().unwrap().number,
        "SETP990000001"
    );
    assert_eq!(claim(&co1, 10), ["in_1"]);
    assert_eq!(claim(&co2, 10), ["in_1"]);
    assert!(co1.change_leased("in_1", &validated()).unwrap());
    assert_eq!(status(&co2, "in_1"), Status::Pending);
    assert_eq!(co2.compliance_counts().unwrap().total, 1);
}
