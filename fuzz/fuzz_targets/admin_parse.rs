//! The admin console parser (`pgsluice::admin::parse`) on arbitrary text: never panics, an
//! error has a message, and a command that parses is printed back in canonical form
//! (quoted names and values) and parses to the same command.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::admin::parse::{is_read_only, parse, Command, Show, StopMode};

fn quote(s: &str, q: char) -> String {
    let doubled = s.replace(q, &format!("{q}{q}"));
    format!("{q}{doubled}{q}")
}

fn show_name(s: Show) -> &'static str {
    match s {
        Show::Pools => "POOLS",
        Show::Stats => "STATS",
        Show::StatsTotals => "STATS_TOTALS",
        Show::StatsAverages => "STATS_AVERAGES",
        Show::Totals => "TOTALS",
        Show::Databases => "DATABASES",
        Show::Clients => "CLIENTS",
        Show::Servers => "SERVERS",
        Show::Config => "CONFIG",
        Show::Users => "USERS",
        Show::Lists => "LISTS",
        Show::Mem => "MEM",
        Show::Version => "VERSION",
        Show::State => "STATE",
        Show::Help => "HELP",
        Show::Hosts => "HOSTS",
        Show::Routes => "ROUTES",
        Show::Latency => "LATENCY",
    }
}

fn print(cmd: &Command) -> String {
    let opt = |verb: &str, db: &Option<String>| match db {
        Some(d) => format!("{verb} {}", quote(d, '"')),
        None => verb.to_string(),
    };
    match cmd {
        Command::Show(s) => format!("SHOW {}", show_name(*s)),
        Command::Pause(d) => opt("PAUSE", d),
        Command::Resume(d) => opt("RESUME", d),
        Command::Reconnect(d) => opt("RECONNECT", d),
        Command::WaitClose(d) => opt("WAIT_CLOSE", d),
        Command::Disable(d) => format!("DISABLE {}", quote(d, '"')),
        Command::Enable(d) => format!("ENABLE {}", quote(d, '"')),
        Command::Kill(d) => format!("KILL {}", quote(d, '"')),
        Command::KillClient(id) => format!("KILL_CLIENT {id}"),
        Command::Reload => "RELOAD".into(),
        Command::Shutdown(StopMode::Immediate) => "SHUTDOWN".into(),
        Command::Shutdown(StopMode::WaitForServers) => "SHUTDOWN WAIT_FOR_SERVERS".into(),
        Command::Shutdown(StopMode::WaitForClients) => "SHUTDOWN WAIT_FOR_CLIENTS".into(),
        Command::Set(k, v) => format!("SET {k} = {};", quote(v, '\'')),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(text) {
        Err(e) => assert!(!e.0.is_empty(), "empty error message"),
        Ok(cmd) => {
            assert_eq!(is_read_only(&cmd), matches!(cmd, Command::Show(_)));
            let printed = print(&cmd);
            match parse(&printed) {
                Ok(again) => assert_eq!(again, cmd, "{text:?} printed as {printed:?}"),
                Err(e) => panic!("{text:?} printed as {printed:?} does not parse: {}", e.0),
            }
        }
    }
});
