//! The `options` startup parameter (`pgsluice::params::parse_options`, PostgreSQL's
//! `pg_split_opts` and `-c` switches) on arbitrary text: never panics, names are never
//! empty and hold no `-`, and the result printed back (escaped, one `-c name=value` per
//! setting) parses to the same list.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::params::{parse_options, StartupOption};

fn escape(arg: &str, out: &mut String) {
    for c in arg.chars() {
        if matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let opts = parse_options(text);
    let mut printed = String::new();
    for (i, o) in opts.iter().enumerate() {
        if i > 0 {
            printed.push(' ');
        }
        match o {
            StartupOption::Set { name, value } => {
                assert!(!name.is_empty() && !name.contains('-'), "bad name {name:?}");
                printed.push_str("-c ");
                escape(&format!("{name}={value}"), &mut printed);
            }
            // An empty argument only comes from a lone backslash at the very end.
            StartupOption::Unsupported(a) if a.is_empty() => {
                if i + 1 != opts.len() {
                    return;
                }
                printed.push('\\');
            }
            // `-c` that took an argument without `=`: print it so it takes one again.
            StartupOption::Unsupported(a) if a == "-c" => printed.push_str("-c -c"),
            StartupOption::Unsupported(a) => escape(a, &mut printed),
        }
    }
    assert_eq!(parse_options(&printed), opts, "{text:?} printed as {printed:?}");
});
