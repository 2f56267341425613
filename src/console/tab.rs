//! The console's nine screens as data: their order, titles and number keys. A leaf:
//! the key table, the state and the drawing all name a screen by this, and it names
//! nothing of theirs.

/// One screen of the console (docs/console.md lists them in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Throughput,
    Circuits,
    Workers,
    Alerts,
    Dian,
    Events,
    Settings,
    /// Stripe against QuickBooks, live (after the eight of docs/console.md).
    Reconcile,
}

impl Tab {
    pub const ALL: [Tab; 9] = [
        Tab::Overview,
        Tab::Throughput,
        Tab::Circuits,
        Tab::Workers,
        Tab::Alerts,
        Tab::Dian,
        Tab::Events,
        Tab::Settings,
        Tab::Reconcile,
    ];
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Throughput => "Throughput",
            Tab::Circuits => "Circuits",
            Tab::Workers => "Workers",
            Tab::Alerts => "Alerts",
            Tab::Dian => "DIAN",
            Tab::Events => "Events",
            Tab::Settings => "Settings",
            Tab::Reconcile => "Reconcile",
        }
    }
    /// The title in a few letters, for the tabs of a narrow terminal.
    pub fn short(self) -> &'static str {
        match self {
            Tab::Overview => "Over",
            Tab::Throughput => "Thru",
            Tab::Circuits => "Circ",
            Tab::Workers => "Work",
            Tab::Alerts => "Alert",
            Tab::Dian => "DIAN",
            Tab::Events => "Event",
            Tab::Settings => "Set",
            Tab::Reconcile => "Recon",
        }
    }
    /// The screen's number key (fixed across versions, as docs/console.md lists them).
    pub fn key(self) -> char {
        match self {
            Tab::Overview => '1',
            Tab::Throughput => '2',
            Tab::Circuits => '3',
            Tab::Workers => '4',
            Tab::Alerts => '5',
            Tab::Dian => '6',
            Tab::Events => '7',
            Tab::Settings => '8',
            Tab::Reconcile => '9',
        }
    }
    /// The screen after this one (Tab), wrapping around.
    pub fn next(self) -> Tab {
        Tab::ALL[(self.index() + 1) % Tab::ALL.len()]
    }
    /// The screen before this one (Shift-Tab), wrapping around.
    pub fn prev(self) -> Tab {
        Tab::ALL[(self.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]
    }
    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}
