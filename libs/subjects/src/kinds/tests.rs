use proptest::prelude::*;
use switchyard_keys::DeploymentPrefix;

use super::*;

/// NATS subject matching, for checking filters.
fn matches(filter: &str, subject: &str) -> bool {
    crate::pattern_matches(filter, subject)
}

fn is_concrete(subject: &str) -> bool {
    subject
        .split('.')
        .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace))
}

/// Raw strings that are sometimes valid ids and often hostile.
fn raw_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9_-]{0,63}",
        "[a-z0-9_.*> /:-]{0,12}",
        "\\PC{0,8}"
    ]
}

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,63}"
}

fn namespace() -> impl Strategy<Value = Namespace> {
    proptest::option::of(id())
        .prop_map(|p| Namespace::new(p.map(|p| DeploymentPrefix::new(p).unwrap())))
}

fn address() -> impl Strategy<Value = Address> {
    (id(), id(), id()).prop_map(|(t, team, p)| Address::parse(&t, &team, &p).unwrap())
}

fn stage() -> impl Strategy<Value = Stage> {
    proptest::sample::select(Stage::ALL.to_vec())
}

fn any_subject() -> impl Strategy<Value = Subject> {
    prop_oneof![
        (
            proptest::sample::select(InputStage::ALL.to_vec()),
            address()
        )
            .prop_map(|(stage, address)| Subject::Stage(StageSubject { stage, address })),
        (proptest::option::of(address()), stage(), any::<bool>()).prop_map(
            |(a, stage, with_platform)| {
                Subject::Dlq(DlqSubject {
                    tenant: a.as_ref().map(|a| a.tenant.clone()),
                    stage,
                    platform: a.filter(|_| with_platform).map(|a| a.platform),
                })
            }
        ),
        address().prop_map(|address| Subject::Receipt(ReceiptSubject { address })),
        id().prop_map(|t| Subject::Attempt(AttemptSubject {
            tenant: TenantId::new(t).unwrap()
        })),
        Just(Subject::Control(ControlSubject {
            command: ControlCommand::Replay
        })),
        (
            proptest::option::of(id()),
            proptest::sample::select(EventKind::ALL.to_vec())
        )
            .prop_map(|(t, kind)| Subject::Event(EventSubject {
                tenant: t.map(|t| TenantId::new(t).unwrap()),
                kind,
            })),
        (id(), any::<bool>()).prop_map(|(t, inflow)| Subject::Alert(AlertSubject {
            tenant: TenantId::new(t).unwrap(),
            kind: if inflow {
                AlertKind::DlqInflow
            } else {
                AlertKind::DlqExpiring
            }
        })),
    ]
}

#[test]
fn documented_examples() {
    let ns = Namespace::default();
    let address = Address::parse("acme", "ops", "slack").unwrap();
    let ingress = StageSubject {
        stage: InputStage::Ingress,
        address: address.clone(),
    };
    assert_eq!(ingress.format(&ns), "ingress.v1.acme.ops.slack");
    let egress = StageSubject {
        stage: InputStage::Egress,
        address,
    };
    let staging = Namespace::new(Some(DeploymentPrefix::new("staging").unwrap()));
    assert_eq!(egress.format(&staging), "staging.egress.v1.acme.ops.slack");
    assert_eq!(staging.stream_name("INGRESS"), "STAGING_INGRESS");
    assert_eq!(staging.bucket_name("routes"), "staging_routes");
    let dlq = DlqSubject {
        tenant: Some(TenantId::new("acme").unwrap()),
        stage: Stage::Egress,
        platform: Some(PlatformId::new("slack").unwrap()),
    };
    assert_eq!(dlq.format(&ns), "dlq.v1.acme.egress.slack");
    let broken = DlqSubject {
        tenant: None,
        stage: Stage::Ingress,
        platform: None,
    };
    assert_eq!(broken.format(&ns), "dlq.v1._.ingress._");
    assert_eq!(
        DlqSubject::parse(&ns, "dlq.v1._.ingress._").unwrap(),
        broken
    );
    assert_eq!(ns.stage_filter(InputStage::Ingress, None), "ingress.v1.>");
    assert_eq!(
        ns.dlq_filter(&DlqFilter {
            stage: Some(Stage::Egress),
            ..Default::default()
        }),
        "dlq.v1.*.egress.*"
    );
}

#[test]
fn parse_errors_are_precise() {
    let ns = Namespace::default();
    let cases = [
        (
            "ingress.v2.acme.ops.slack",
            "has version \"v2\"; this build speaks v1",
        ),
        (
            "ingress.v1.acme.ops",
            "has 2 tokens after the version; a pipeline stage subject has 3",
        ),
        (
            "ingress.v1.acme.ops.slack.x",
            "has 4 tokens after the version",
        ),
        ("ingress.v1.ACME.ops.slack", "invalid character 'A'"),
        ("ingress.v1.acme..slack", "team id must not be empty"),
        ("sink.v1.acme.ops.slack", "is not a pipeline stage subject"),
        ("dlq.v1.acme.sink.slack", "unknown stage \"sink\""),
        (
            "backpressure.v1.acme.ops.slack",
            "has 3 tokens after the version; a pipeline stage subject has 4",
        ),
        (
            "backpressure.v1.03.acme.ops.slack",
            "names the wrong shard: its tenant's shard is 15",
        ),
        ("backpressure.v1.15.acme.ops.*", "invalid character '*'"),
        (
            "backpressure.v1.15.acme.ops.slack.3k",
            "ends in \"3k\", which is no size class",
        ),
        (
            "backpressure.v1.03.acme.ops.slack.1k",
            "\"backpressure.v1.03.acme.ops.slack.1k\" names the wrong shard",
        ),
        (
            "idempotency.v1.acme.ops.slack.1k.x",
            "has 5 tokens after the version; a pipeline stage subject has 3",
        ),
        (
            "egress.v1.acme.ops.slack.1k",
            "has 4 tokens after the version",
        ),
    ];
    for (subject, expected) in cases {
        let err = Subject::parse(&ns, subject).unwrap_err().to_string();
        assert!(err.contains(expected), "{subject}: {err}");
    }
    let staging = Namespace::new(Some(DeploymentPrefix::new("staging").unwrap()));
    let err = Subject::parse(&staging, "prod.ingress.v1.acme.ops.slack").unwrap_err();
    assert!(matches!(err, SubjectError::WrongPrefix { .. }));
}

proptest! {
    #[test]
    fn every_subject_round_trips(ns in namespace(), subject in any_subject()) {
        let formatted = subject.format(&ns);
        prop_assert!(is_concrete(&formatted), "{}", formatted);
        prop_assert_eq!(Subject::parse(&ns, &formatted).unwrap(), subject);
    }

    #[test]
    fn no_id_adds_a_token_or_wildcard(ns in namespace(), tenant in raw_id(), team in raw_id(), platform in raw_id()) {
        let prefix_tokens = usize::from(ns.prefix().is_some());
        if let Ok(address) = Address::parse(&tenant, &team, &platform) {
            let subject = StageSubject { stage: InputStage::Ingress, address }.format(&ns);
            prop_assert_eq!(subject.split('.').count(), prefix_tokens + 5);
            prop_assert!(is_concrete(&subject));
        }
    }

    #[test]
    fn tenant_filter_selects_exactly_that_tenant(ns in namespace(), a in address(), b in address(), stage in proptest::sample::select(InputStage::ALL.to_vec())) {
        let filter = ns.stage_filter(stage, Some(&a.tenant));
        let subject_a = StageSubject { stage, address: a.clone() }.format(&ns);
        let subject_b = StageSubject { stage, address: b.clone() }.format(&ns);
        prop_assert!(matches(&filter, &subject_a));
        prop_assert_eq!(matches(&filter, &subject_b), a.tenant == b.tenant);
        prop_assert!(matches(&ns.stage_filter(stage, None), &subject_b));
    }

    #[test]
    fn a_sharded_stages_subjects_sit_in_their_tenants_shard_alone(ns in namespace(), a in address()) {
        let stage = InputStage::Backpressure;
        let subject = StageSubject { stage, address: a.clone() }.format(&ns);
        let prefix_tokens = usize::from(ns.prefix().is_some());
        prop_assert_eq!(subject.split('.').count(), prefix_tokens + 6);
        let own = Shard::of(&a.tenant);
        for shard in Shard::all() {
            prop_assert_eq!(matches(&ns.shard_filter(stage, shard), &subject), shard == own);
        }
        prop_assert_eq!(StageSubject::parse(&ns, &subject).unwrap().address, a);
    }

    #[test]
    fn a_sized_stages_subject_carries_its_class_and_is_still_its_tenants(ns in namespace(), a in address(), b in address(), stage in proptest::sample::select(InputStage::ALL.to_vec()), bytes in 0usize..80_000_000) {
        let class = SizeClass::of(bytes);
        let subject = StageSubject { stage, address: a.clone() };
        let sized = subject.format_sized(&ns, class);
        prop_assert!(is_concrete(&sized), "{}", sized);
        let extra = usize::from(stage.sized());
        prop_assert_eq!(sized.split('.').count(), subject.format(&ns).split('.').count() + extra);
        let (parsed, found) = StageSubject::parse_sized(&ns, &sized).unwrap();
        prop_assert_eq!(&parsed, &subject);
        prop_assert_eq!(found, stage.sized().then_some(class));
        // The form without a class still parses, with none.
        prop_assert_eq!(StageSubject::parse_sized(&ns, &subject.format(&ns)).unwrap(), (subject.clone(), None));
        prop_assert!(matches(&ns.stage_filter(stage, Some(&a.tenant)), &sized));
        let other = StageSubject { stage, address: b.clone() }.format_sized(&ns, class);
        prop_assert_eq!(matches(&ns.stage_filter(stage, Some(&a.tenant)), &other), a.tenant == b.tenant);
        if stage.sharded() {
            for shard in Shard::all() {
                prop_assert_eq!(matches(&ns.shard_filter(stage, shard), &sized), shard == Shard::of(&a.tenant));
            }
        }
    }

    #[test]
    fn dlq_filter_selects_exactly_its_entries(ns in namespace(), a in address(), s in stage(), other in address(), other_stage in stage()) {
        let entry = DlqSubject { tenant: Some(other.tenant.clone()), stage: other_stage, platform: Some(other.platform.clone()) }.format(&ns);
        let filter = DlqFilter { tenant: Some(a.tenant.clone()), stage: Some(s), platform: None };
        let expected = other.tenant == a.tenant && other_stage == s;
        prop_assert_eq!(matches(&ns.dlq_filter(&filter), &entry), expected);
    }
}

#[test]
fn event_subjects_name_their_tenant_or_the_deployment() {
    let ns = Namespace::default();
    let acme = EventSubject {
        tenant: Some(TenantId::new("acme").unwrap()),
        kind: EventKind::DestinationDisabled,
    };
    assert_eq!(acme.format(&ns), "events.v1.acme.destination_disabled");
    assert_eq!(EventSubject::parse(&ns, &acme.format(&ns)).unwrap(), acme);
    let all = EventSubject {
        tenant: None,
        kind: EventKind::ReplayJobFinished,
    };
    assert_eq!(all.format(&ns), "events.v1._.replay_job_finished");
    assert_eq!(
        EventSubject::parse(&ns, "events.v1._.replay_job_finished").unwrap(),
        all
    );
    assert!(EventSubject::parse(&ns, "events.v1.acme.exploded").is_err());
    assert_eq!(ns.event_filter(None, None), "events.v1.*.*");
    assert!(matches(
        &ns.event_filter(Some(&TenantId::new("acme").unwrap()), None),
        &acme.format(&ns)
    ));
    assert!(!matches(
        &ns.event_filter(Some(&TenantId::new("acme-eu").unwrap()), None),
        &acme.format(&ns)
    ));
    assert_eq!(
        "breaker_opened".parse::<EventKind>(),
        Ok(EventKind::BreakerOpened)
    );
    assert!(
        "nope"
            .parse::<EventKind>()
            .unwrap_err()
            .contains("destination_disabled")
    );
}
