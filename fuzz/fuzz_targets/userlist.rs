//! The `auth_file` parser (`pgsluice::auth::userlist`) on arbitrary text: never panics,
//! an error names a line of the text, and a file that parses, printed back (one quoted
//! `"user" "secret"` line per entry), parses to the same entries.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::auth::{userlist, Error, Secret};

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match userlist::parse(text) {
        Err(Error::Userlist { line, reason }) => {
            assert!(line >= 1 && line <= text.lines().count(), "line {line} of {}", text.lines().count());
            assert!(!reason.is_empty());
        }
        Err(e) => panic!("unexpected error kind {e:?}"),
        Ok(users) => {
            let mut printed = String::new();
            for (user, secret) in &users {
                assert!(!user.is_empty());
                let s = match secret {
                    Secret::Plain(p) | Secret::Md5(p) => p.clone(),
                    Secret::Scram(v) => v.to_string_form(),
                };
                printed.push_str(&format!("{} {}\n", quote(user), quote(&s)));
            }
            let again = userlist::parse(&printed).expect("printed userlist parses");
            assert!(again == users, "{text:?} printed as {printed:?}");
        }
    }
});
