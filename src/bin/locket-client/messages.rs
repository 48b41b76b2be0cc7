//! The one place `locket-client` decides how what happened is shown.
//!
//! The library does not print: it reports events through `tracing`
//! (a warning, a note, an error). This module turns each into one line on
//! stderr, `locket-client: [warning: ]<message>`, the format scripts and the
//! journal have always seen. Only locket's own events are shown, never a
//! dependency's; `LOCKET_LOG=warn` keeps only warnings and errors (for a
//! quieter watcher), `LOCKET_LOG=off` nothing. Retry progress (`waiting
//! for …`) is shown only on a terminal outside systemd. Fields other than the
//! message are not printed: what a person needs is in the message.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Shows locket's events on stderr, one line each.
pub(crate) fn init() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = std::env::var("LOCKET_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    // Retry progress is for a person watching: shown on a terminal, never
    // under systemd (whose journal would keep every attempt) or in a pipe.
    let watched = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("INVOCATION_ID").is_none()
        && std::env::var_os("JOURNAL_STREAM").is_none();
    let only_locket = tracing_subscriber::filter::filter_fn(move |meta| {
        meta.target().starts_with("locket")
            && *meta.level() <= level
            && (meta.target() != locket::client::PROGRESS || watched)
    });
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(Line);
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::Layer::with_filter(lines, only_locket))
        .try_init();
}

/// `locket-client: [warning: ]<message>`.
struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut message = Message(String::new());
        event.record(&mut message);
        let kind = if *event.metadata().level() == Level::WARN {
            "warning: "
        } else {
            ""
        };
        writeln!(writer, "locket-client: {kind}{}", message.0)
    }
}

/// The event's message field.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }
}
