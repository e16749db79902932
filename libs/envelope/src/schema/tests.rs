use super::*;

/// Envelope-like headers at `version`, sealed or not (only the headers [`upgrade`] reads).
fn headers_at(version: &str, sealed: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(SCHEMA, version);
    h.insert("Switchyard-Id", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
    if sealed {
        h.insert(SEAL_KEY, "3f9c0a7de21b4c55");
        h.insert(SEAL_NONCE, "AAAAAAAAAAAAAAAA");
    }
    h
}

fn schema_of(h: &HeaderMap) -> &str {
    h.get(SCHEMA).unwrap().as_str()
}

#[test]
fn writers_stamp_the_lowest_version_that_describes_the_payload() {
    assert_eq!(schema_for(false), 1);
    assert_eq!(schema_for(true), 2);
    assert_eq!(schema_for(true), SCHEMA_VERSION);
    assert_eq!(schema_for(false), MIN_SCHEMA_VERSION);
}

#[test]
fn readers_accept_exactly_min_to_current() {
    for version in MIN_SCHEMA_VERSION..=SCHEMA_VERSION {
        assert_eq!(readable(version), Ok(version));
    }
    for version in [0, SCHEMA_VERSION + 1, u16::MAX] {
        let err = readable(version).unwrap_err();
        assert_eq!(err, UnsupportedSchema { found: version });
        assert_eq!(
            err.to_string(),
            format!(
                "envelope schema version {version} is not one this build reads (it reads versions 1..=2)"
            )
        );
    }
}

#[test]
fn the_steps_chain_from_the_oldest_version_read_to_the_current_one() {
    let mut version = MIN_SCHEMA_VERSION;
    for step in STEPS {
        assert_eq!(step.from, version, "steps are in order without gaps");
        assert_eq!(step.to, step.from + 1);
        assert!(!step.does.is_empty());
        version = step.to;
    }
    assert_eq!(
        version, SCHEMA_VERSION,
        "the last step reaches SCHEMA_VERSION"
    );
}

#[test]
fn a_plain_version_1_entry_passes_step_1_and_stays_version_1() {
    let mut h = headers_at("1", false);
    let before = h.clone();
    let done = upgrade(&mut h).unwrap();
    assert_eq!(
        done,
        Upgrade {
            from: 1,
            to: 1,
            steps: vec![1]
        }
    );
    assert_eq!(h, before, "a plain version 1 envelope is unchanged");
}

#[test]
fn a_sealed_version_2_entry_stays_version_2() {
    let mut h = headers_at("2", true);
    let done = upgrade(&mut h).unwrap();
    assert_eq!(
        done,
        Upgrade {
            from: 2,
            to: 2,
            steps: vec![]
        }
    );
    assert_eq!(schema_of(&h), "2");
    assert_eq!(h.get(SEAL_KEY).unwrap().as_str(), "3f9c0a7de21b4c55");
}

#[test]
fn a_plain_version_2_entry_is_written_down_to_version_1() {
    let mut h = headers_at("2", false);
    let done = upgrade(&mut h).unwrap();
    assert_eq!((done.from, done.to), (2, 1));
    assert_eq!(schema_of(&h), "1");
}

#[test]
fn a_version_1_entry_carrying_seal_headers_is_refused_as_inconsistent() {
    for only in [None, Some(SEAL_KEY), Some(SEAL_NONCE)] {
        let mut h = headers_at("1", only.is_none());
        if let Some(name) = only {
            h.insert(name, "x");
        }
        let before = h.clone();
        let err = upgrade(&mut h).unwrap_err();
        let header = only.unwrap_or(SEAL_KEY);
        assert_eq!(err, SchemaError::Inconsistent { version: 1, header });
        assert_eq!(
            err.to_string(),
            format!(
                "envelope schema version 1 does not describe header {header} (a sealed payload is version 2): a reader of version 1 would take the ciphertext for the payload"
            )
        );
        assert_eq!(h, before, "a refused entry's headers are left as they were");
    }
}

#[test]
fn a_version_this_build_does_not_read_is_refused_naming_it_and_the_range() {
    for (raw, found) in [("3", 3), ("0", 0), ("65535", u16::MAX)] {
        let mut h = headers_at(raw, false);
        let before = h.clone();
        let err = upgrade(&mut h).unwrap_err();
        assert_eq!(err, SchemaError::Unsupported(UnsupportedSchema { found }));
        let text = err.to_string();
        assert!(text.contains(&format!("version {found} ")), "{text}");
        assert!(text.contains("1..=2"), "{text}");
        assert_eq!(h, before);
    }
}

#[test]
fn a_missing_or_garbled_version_is_refused() {
    let mut none = HeaderMap::new();
    assert_eq!(upgrade(&mut none).unwrap_err(), SchemaError::Missing);
    assert_eq!(
        SchemaError::Missing.to_string(),
        "missing header Switchyard-Schema"
    );
    for garbled in ["two", "-1", "1.0", "", "70000"] {
        let mut h = headers_at(garbled, false);
        let err = upgrade(&mut h).unwrap_err();
        assert_eq!(
            err,
            SchemaError::Invalid {
                value: garbled.into()
            }
        );
        assert!(
            err.to_string()
                .starts_with("header Switchyard-Schema has an invalid value"),
            "{err}"
        );
    }
}
