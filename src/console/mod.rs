//! The console: reads engine snapshots, sends commands, never touches the engine's
//! internals — it imports `crate::protocol` only, and drives an engine through a
//! [`Link`] (the in-process one is in `app.rs`). Each command's reply comes back to
//! this console alone and becomes its flash line; the open invoice's detail is a query
//! it asks when the selection changes and once a second while the DIAN screen is open.
//! Redraws at once after input; otherwise only when the snapshot changed,
//! at most `max_fps` times a second, and not at all while nothing changes (what an
//! operator pays for over SSH). The terminal is restored on exit, error and panic.

pub mod chrome;
pub mod keymap;
pub mod screens;
pub mod state;
pub mod theme;

use std::io::{BufWriter, Stdout, Write};
use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyEventKind};
use crossterm::{execute, terminal};
use futures_util::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::time::Instant;

use tokio::sync::mpsc;

use crate::protocol::{Command, CommandError, Link, Query, QueryReply, Reply, Request};
use state::App;
use theme::Theme;

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

fn draw(term: &mut Term, app: &App) -> anyhow::Result<()> {
    // Synchronized update: the terminal shows the whole frame at once, never half of it.
    execute!(term.backend_mut(), terminal::BeginSynchronizedUpdate)?;
    term.draw(|f| screens::draw(f, app))?;
    execute!(term.backend_mut(), terminal::EndSynchronizedUpdate)?;
    term.backend_mut().flush()?;
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
    let mut snapshots = engine.snapshots();
    let mut app = App::new(snapshots.borrow_and_update().clone(), Theme::from_env());
    app.sandbox = engine.sandbox();
    let mut input = EventStream::new();
    let frame_gap = Duration::from_millis(1000 / u64::from(max_fps.max(1)));
    let mut last_draw = Instant::now() - frame_gap;
    let mut dirty = true;
    let mut urgent = true;
    // After a hangup there is no terminal to draw on or read from: drain quietly.
    let mut hung_up = false;
    // Replies to this console's commands and answers to its queries.
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<Back>();
    let mut detail = DetailPoll::default();
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let wanted = app.detail_wanted();
        if wanted.is_some() && wanted != detail.asked && !detail.pending {
            // A newly selected invoice: ask for its detail now.
            detail.ask(engine, wanted.clone(), &back_tx).await;
        } else if wanted.is_none() {
            detail.asked = None;
        }
        if dirty && !hung_up && (urgent || last_draw.elapsed() >= frame_gap) {
            draw(term, &app)?;
            last_draw = Instant::now();
            dirty = false;
            urgent = false;
        }
        let next_frame = last_draw + frame_gap;
        tokio::select! {
            sig = signals.next() => {
                hung_up |= sig == Stop::Hangup;
                if !app.quitting {
                    // The same path as `q` confirmed: stop claiming, drain, exit.
                    app.quitting = true;
                    app.confirm = None;
                    app.prompt = None;
                    app.frozen = false;
                    app.flash = Some(format!("{}: draining in-flight work…", sig.name()));
                    tracing::info!("{}: draining in-flight work", sig.name());
                    send(engine, Command::Shutdown {}, &mut app, &back_tx).await;
                }
                dirty = true;
                urgent = true;
            }
            ev = input.next(), if !hung_up => match ev {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    if let Some(cmd) = app.on_key(key) {
                        send(engine, cmd, &mut app, &back_tx).await;
                    }
                    dirty = true;
                    urgent = true;
                }
                Some(Ok(Event::Resize(_, _))) => {
                    term.autoresize()?;
                    dirty = true;
                    urgent = true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    // The engine has stopped (drained after a quit, or on its own).
                    return Ok(());
                }
                if app.on_snapshot(snapshots.borrow_and_update().clone()) {
                    dirty = true;
                }
            }
            Some(back) = back_rx.recv() => match back {
                Back::Reply(command, reply) => {
                    app.on_reply(&command, reply);
                    dirty = true;
                    urgent = true;
                }
                Back::Detail(key, reply) => {
                    detail.pending = false;
                    if app.on_detail(&key, reply) {
                        dirty = true;
                    }
                }
            },
            _ = poll.tick(), if wanted.is_some() && !app.frozen && !detail.pending => {
                // The open invoice moves on (a retry, DIAN's answer): ask again.
                detail.ask(engine, wanted, &back_tx).await;
            }
            _ = tokio::time::sleep_until(next_frame), if dirty => {}
        }
    }
}

/// A signal that asks the console to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Terminate,
    Hangup,
    Interrupt,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Terminate => "SIGTERM",
            Stop::Hangup => "SIGHUP",
            Stop::Interrupt => "SIGINT",
        }
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

    async fn next(&mut self) -> Stop {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.term.recv() => Stop::Terminate,
                Some(()) = self.hup.recv() => Stop::Hangup,
                Some(()) = self.int.recv() => Stop::Interrupt,
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Interrupt
        }
    }
}

/// What comes back to this console: a reply to one of its commands, or the answer to
/// its detail query for an invoice.
enum Back {
    Reply(Command, Reply),
    Detail(String, QueryReply),
}

/// The DIAN detail's query: which invoice was last asked for, and whether an answer
/// is still awaited (one query at a time).
#[derive(Default)]
struct DetailPoll {
    asked: Option<String>,
    pending: bool,
}

impl DetailPoll {
    async fn ask<L: Link>(
        &mut self,
        engine: &L,
        key: Option<String>,
        back: &mpsc::UnboundedSender<Back>,
    ) {
        let Some(key) = key else { return };
        self.asked = Some(key.clone());
        let query = Query::InvoiceDetail { key: key.clone() };
        let Ok(rx) = engine.query(query).await else {
            return;
        };
        self.pending = true;
        let back = back.clone();
        tokio::spawn(async move {
            let answer = rx.await.unwrap_or_else(|_| Err(stopped()));
            let _ = back.send(Back::Detail(key, answer));
        });
    }
}

fn stopped() -> CommandError {
    CommandError::unavailable("the engine stopped before answering")
}

/// Sends `cmd` as this console's operator; its reply comes back on `back`.
async fn send<L: Link>(
    engine: &L,
    cmd: Command,
    app: &mut App,
    back: &mpsc::UnboundedSender<Back>,
) {
    let request = Request::new(app.actor.clone(), cmd.clone());
    match engine.send(request).await {
        Ok(rx) => {
            let back = back.clone();
            tokio::spawn(async move {
                let reply = rx.await.unwrap_or_else(|_| Err(stopped()));
                let _ = back.send(Back::Reply(cmd, reply));
            });
        }
        Err(_) => {
            app.flash = Some("the engine is not running; the command was not sent".into());
        }
    }
}
