//! The statement classifier (`pgsluice::sql::classify`) on arbitrary text. Properties:
//! deterministic (twice, and with or without the parser-path cache, which is kept tiny so
//! it evicts); a read-only text that opens a block opens it `READ ONLY`; a routing hint
//! needs a comment; and conservative: a read-only text followed by a write is never
//! read-only (the text is complete, or it would not have been read-only).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgsluice::sql::classify::{Begin, Classifier, ClassifierSettings, Hint};

fn classifiers() -> &'static (Classifier, Classifier) {
    static C: OnceLock<(Classifier, Classifier)> = OnceLock::new();
    C.get_or_init(|| {
        let settings = |cache_size| ClassifierSettings {
            read_only_functions: vec!["myschema.f".into(), "g".into()],
            max_parse_length: 4096,
            cache_size,
        };
        (Classifier::new(settings(8)), Classifier::new(settings(0)))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let (cached, uncached) = classifiers();
    let c = cached.classify(sql);
    assert_eq!(c, cached.classify(sql), "not deterministic (cache hit)");
    assert_eq!(c, uncached.classify(sql), "the cache changes the answer");
    if c.read_only {
        assert!(matches!(c.begin, Begin::None | Begin::ReadOnly), "read-only block opened {:?}", c.begin);
        let with_write = format!("{sql}\n;INSERT INTO t VALUES (1)");
        assert!(!uncached.classify(&with_write).read_only, "a trailing INSERT is routed to a replica");
    }
    if c.hint != Hint::None {
        assert!(sql.contains("/*"), "hint without a comment");
    }
});
