//! The console: reads engine snapshots, sends commands, never touches the engine's
//! internals — it imports `crate::protocol` only, and drives an engine through a
//! [`Link`] (the in-process one is in `app.rs`). Each command's reply comes back to
//! this console alone and becomes its flash line; the open invoice's detail is a query
//! it asks when the selection changes and once a second while the DIAN screen is open.
//! Redraws at once after input; otherwise only when the snapshot changed,
//! at most `max_fps` times a second, and not at all while nothing changes (what an
//! operator pays for over SSH). The terminal is restored on exit, error and panic.
//!
//! The run loop here turns what happens (keys, resizes, snapshots, replies, answers,
//! signals) into [`update::Msg`]s, hands each to [`update::update`] — the one place
//! the console's state changes — and carries out the [`update::Effect`]s it returns
//! through the [`Link`]. It decides nothing itself but when to draw.
//!
//! Who uses whom; no edge runs back up:
//!
//! ```text
//! run loop (this file) ─┬─▶ update ──┬─▶ keymap ─▶ tab
//!                       │            ├─▶ command_line ─▶ tab
//!                       │            └─▶ state ──▶ command_line, selection, tab, theme
//!                       └─▶ screens ─┬─▶ chrome ─▶ keymap, state, command_line
//!                                    └─▶ state
//! ```

pub mod chrome;
pub mod command_line;
pub mod keymap;
pub mod screens;
pub mod selection;
pub mod state;
pub mod tab;
pub mod theme;
pub mod update;

use std::collections::VecDeque;
use std::io::{BufWriter, Stdout, Write};
use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyEventKind};
use crossterm::{execute, queue, terminal};
use futures_util::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::time::Instant;

use tokio::sync::mpsc;

use crate::protocol::{CommandError, CompanyTag, Link, Pacer, Query, Request, Shown};
use state::App;
use theme::Theme;
use update::{Effect, Msg, Signal, update};

type Term = Terminal<CrosstermBackend<BufWriter<Stdout>>>;

fn setup() -> anyhow::Result<Term> {
    terminal::enable_raw_mode()?;
    let mut out = std::io::stdout();
    if let Err(e) = execute!(out, terminal::EnterAlternateScreen) {
        restore();
        return Err(e.into());
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        hook(info);
    }));
    let mut term = Terminal::new(CrosstermBackend::new(BufWriter::with_capacity(
        64 * 1024,
        std::io::stdout(),
    )))?;
    term.hide_cursor()?;
    term.clear()?;
    Ok(term)
}

/// Puts the terminal back the way the shell expects it. Safe to call twice.
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let mut out = std::io::stdout();
    let _ = execute!(out, terminal::LeaveAlternateScreen, crossterm::cursor::Show);
    let _ = out.flush();
}

/// One frame as one synchronized update: the terminal shows the whole frame at once,
/// never half of it (over SSH a frame arrives in several packets). The begin goes out
/// in the same write as the frame; nothing is written between frames.
fn draw(term: &mut Term, app: &App) -> anyhow::Result<()> {
    queue!(term.backend_mut(), terminal::BeginSynchronizedUpdate)?;
    term.draw(|f| screens::draw(f, app))?;
    execute!(term.backend_mut(), terminal::EndSynchronizedUpdate)?;
    Ok(())
}

/// Runs the console until the operator quits (and the engine has drained) or the
/// engine stops on its own.
pub async fn run<L: Link>(engine: &mut L, max_fps: u32) -> anyhow::Result<()> {
    // Caught before the terminal turns raw, so no signal can leave it raw.
    let signals = Signals::new()?;
    let mut term = setup()?;
    let result = event_loop(&mut term, engine, max_fps, signals).await;
    restore();
    if result.is_err() {
        // The console failed; do not leave the engine running without anyone watching.
        engine.shutdown().await;
    }
    result
}

async fn event_loop<L: Link>(
    term: &mut Term,
    engine: &mut L,
    max_fps: u32,
    mut signals: Signals,
) -> anyhow::Result<()> {
    // Messages waiting for `update`: the one just received, then what its effects
    // bring back at once (a command the engine could not take, the sandbox's answer).
    let mut inbox = VecDeque::new();
    let mut snapshots = engine.snapshots();
    // Several companies: each one's row, and which one the link shows.
    let mut companies = engine.companies();
    let mut follow_companies = true;
    let mut app = App::new(snapshots.borrow_and_update().clone(), Theme::from_env())
        .with_sandbox(engine.sandbox())
        .with_company(engine.company())
        .with_companies(companies.borrow_and_update().clone());
    // Where the console stands with its engine, and who else is attached: followed
    // while their senders live (an engine in this process has fixed answers).
    let mut link = engine.state();
    let mut consoles = engine.consoles();
    let (mut follow_link, mut follow_consoles) = (true, true);
    let mut shown = Shown::default();
    inbox.push_back(Msg::Link(link.borrow_and_update().clone()));
    inbox.push_back(Msg::Consoles(consoles.borrow_and_update().clone()));
    let mut input = EventStream::new();
    // At most `max_fps` frames a second, but one between two regular ones (an
    // operator's action seen just after a tick) drawn at once.
    let mut pace = Pacer::new(max_fps, Instant::now());
    let mut dirty = true;
    let mut urgent = true;
    // Replies to this console's commands and answers to its queries, as messages.
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<Msg>();
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticking = false;
    loop {
        while let Some(msg) = inbox.pop_front() {
            for effect in update(&mut app, msg) {
                match effect {
                    Effect::Send(request) => send(engine, request, &back_tx, &mut inbox).await,
                    Effect::Ask(q) => ask(engine, q, app.company_epoch, &back_tx, &mut inbox).await,
                    Effect::PatchFaults(patch) => {
                        let result = match &app.sandbox {
                            Some(sandbox) => sandbox.patch_faults_as(&app.actor, &patch),
                            None => Err("no sandbox runs".into()),
                        };
                        inbox.push_back(Msg::FaultsPatched { patch, result });
                    }
                    Effect::WriteBundle(bundle) => {
                        let written = tokio::task::block_in_place(|| write_bundle(&bundle));
                        inbox.push_back(Msg::BundleWritten(written));
                    }
                    Effect::Redraw { urgent: now } => {
                        dirty = true;
                        urgent |= now;
                    }
                    Effect::Exit => return Ok(()),
                    Effect::Watch(id) => {
                        let watched = watch(engine, id, &mut snapshots, &mut app).await;
                        inbox.push_back(Msg::Watched(watched));
                    }
                }
            }
        }
        // An engine over the network sends some parts only while they are shown.
        if app.shown() != shown {
            shown = app.shown();
            engine.show(shown);
        }
        // After a hangup there is no terminal to draw on or read from: drain quietly.
        if dirty && !app.hung_up && (urgent || pace.ready(Instant::now())) {
            draw(term, &app)?;
            pace.sent(Instant::now());
            dirty = false;
            urgent = false;
        }
        // The clock starts a whole second out (unpolled while off, it would fire at once).
        if !std::mem::replace(&mut ticking, app.ticks()) && ticking {
            poll.reset();
        }
        let next_frame = pace.next_at();
        let msg = tokio::select! {
            signal = signals.next() => Msg::Signal(signal),
            ev = input.next(), if !app.hung_up => match ev {
                Some(Ok(event)) => match message(event) {
                    Some(msg) => msg,
                    None => continue,
                },
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            changed = snapshots.changed() => match changed {
                Ok(()) => Msg::Snapshot(snapshots.borrow_and_update().clone()),
                Err(_) => Msg::EngineStopped,
            },
            Some(msg) = back_rx.recv() => msg,
            changed = link.changed(), if follow_link => match changed {
                Ok(()) => Msg::Link(link.borrow_and_update().clone()),
                Err(_) => { follow_link = false; continue; }
            },
            changed = consoles.changed(), if follow_consoles => match changed {
                Ok(()) => Msg::Consoles(consoles.borrow_and_update().clone()),
                Err(_) => { follow_consoles = false; continue; }
            },
            changed = companies.changed(), if follow_companies => match changed {
                Ok(()) => Msg::Companies(companies.borrow_and_update().clone()),
                Err(_) => { follow_companies = false; continue; }
            },
            _ = poll.tick(), if ticking => Msg::Tick,
            _ = tokio::time::sleep_until(next_frame), if dirty => continue,
        };
        inbox.push_back(msg);
    }
}

/// Has the link watch company `id`: that company's snapshots (and the demo's sandbox
/// as it reaches it) from now on, with its first view; or why not.
async fn watch<L: Link>(
    engine: &mut L,
    id: String,
    snapshots: &mut tokio::sync::watch::Receiver<std::sync::Arc<crate::protocol::Snapshot>>,
    app: &mut App,
) -> Result<(CompanyTag, std::sync::Arc<crate::protocol::Snapshot>), String> {
    engine.watch_company(&id).await?;
    *snapshots = engine.snapshots();
    let first = snapshots.borrow_and_update().clone();
    let tag = engine
        .company()
        .unwrap_or_else(|| CompanyTag::new(id.clone(), id));
    app.sandbox = engine.sandbox();
    Ok((tag, first))
}

/// The terminal event as a message (`None`: nothing the console acts on).
fn message(event: Event) -> Option<Msg> {
    match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => Some(Msg::Key(key)),
        Event::Resize(width, height) => Some(Msg::Resize { width, height }),
        _ => None,
    }
}

/// SIGTERM, SIGHUP and SIGINT (from `kill`; Ctrl-C typed in raw mode is a key),
/// caught so that each drains the engine and restores the terminal instead of killing
/// the process with the terminal left raw.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.term.recv() => Signal::Terminate,
                Some(()) = self.hup.recv() => Signal::Hangup,
                Some(()) = self.int.recv() => Signal::Interrupt,
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Interrupt
        }
    }
}

fn stopped() -> CommandError {
    CommandError::unavailable("the engine stopped before answering")
}

/// Sends `request`; its reply comes back on `back` (at once in `inbox` when the engine
/// no longer runs).
async fn send<L: Link>(
    engine: &L,
    request: Request,
    back: &mpsc::UnboundedSender<Msg>,
    inbox: &mut VecDeque<Msg>,
) {
    let command = request.command.clone();
    let company = request.company.clone();
    match engine.send(request).await {
        Ok(rx) => {
            let back = back.clone();
            tokio::spawn(async move {
                let reply = rx.await.unwrap_or_else(|_| Err(stopped()));
                let _ = back.send(Msg::Reply {
                    command,
                    reply,
                    company,
                });
            });
        }
        Err(_) => inbox.push_back(Msg::NotSent(command)),
    }
}

/// Asks `query`, in the company epoch `epoch`; its answer comes back on `back` (at
/// once in `inbox`, as an error, when the engine no longer runs).
async fn ask<L: Link>(
    engine: &L,
    query: Query,
    epoch: u64,
    back: &mpsc::UnboundedSender<Msg>,
    inbox: &mut VecDeque<Msg>,
) {
    match engine.query(query.clone()).await {
        Ok(rx) => {
            let back = back.clone();
            tokio::spawn(async move {
                let reply = rx.await.unwrap_or_else(|_| Err(stopped()));
                let _ = back.send(Msg::Answer {
                    query,
                    reply,
                    epoch,
                });
            });
        }
        Err(_) => inbox.push_back(Msg::Answer {
            query,
            reply: Err(stopped()),
            epoch,
        }),
    }
}

/// Writes `bundle` to a new file in the working directory (mode 0600: it holds
/// operational data), named for when it was taken; the path written, or why not.
fn write_bundle(bundle: &crate::protocol::Bundle) -> Result<String, String> {
    let bytes = bundle.encode()?;
    let dir = std::env::current_dir().map_err(|e| format!("no working directory: {e}"))?;
    let path = dir.join(crate::protocol::Bundle::file_name(bundle.written_ms));
    crate::protocol::bundle::write_new(&path, &bytes)?;
    Ok(path.display().to_string())
}
