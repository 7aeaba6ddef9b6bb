use super::*;
use crate::cluster::catalog::{Barrier, SegmentBackup, SegmentPoint};
use crate::repo::catalog::ArchiveRecord;

const SEG: u64 = 1 << 20;

fn t(minute: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .to_utc()
        + chrono::Duration::minutes(minute)
}

/// A backup of content `id` on timeline `tli` from segment `start` to
/// segment `stop` (LSNs in the middle of them), finished at minute `at`.
fn backup(id: i32, name: &str, tli: u32, start: u64, stop: u64, at: i64) -> BackupRecord {
    BackupRecord {
        format: 2,
        name: name.into(),
        content_id: id,
        start_lsn: Lsn(start * SEG + 40),
        stop_lsn: Lsn(stop * SEG + 100),
        timeline: TimelineId(tli),
        stop_timeline: TimelineId(tli),
        start_time: t(at - 1),
        stop_time: t(at),
        server_version: 150000,
        system_identifier: "1".into(),
        wal_segment_size: SEG,
        archives: vec![ArchiveRecord {
            name: "base".into(),
            tablespace_path: None,
            parts: 1,
            plain_bytes: 1000,
            stored_bytes: 100,
            server_compression: None,
            map_parts: 0,
        }],
        compression: "lz4".into(),
        encrypted: false,
        manifest_bytes: 10,
        base: None,
        chain: Vec::new(),
        permanent: false,
    }
}

fn delta(mut b: BackupRecord, base: &str) -> BackupRecord {
    b.base = Some(base.into());
    b
}

fn point(id: i32, name: &str, tli: u32, seg: u64, at: i64) -> RestorePointRecord {
    RestorePointRecord {
        name: name.into(),
        content_id: id,
        lsn: Lsn(seg * SEG + 500),
        timeline: TimelineId(tli),
        time: t(at),
    }
}

/// WAL segments `from..=to` of timeline `tli`.
fn wal(tli: u32, from: u64, to: u64) -> Vec<WalObject> {
    (from..=to)
        .map(|s| WalObject {
            name: WalSegmentName::from_lsn(TimelineId(tli), Lsn(s * SEG), SEG).to_string(),
            size: SEG,
            modified: None,
        })
        .collect()
}

fn seg_name(tli: u32, s: u64) -> String {
    WalSegmentName::from_lsn(TimelineId(tli), Lsn(s * SEG), SEG).to_string()
}

fn instance(
    backups: Vec<BackupRecord>,
    points: Vec<RestorePointRecord>,
    wal: Vec<WalObject>,
) -> InstanceInventory {
    InstanceInventory {
        backups,
        points,
        wal,
        segment_size: SEG,
    }
}

fn single(i: InstanceInventory) -> Inventory {
    Inventory {
        instances: [(-1, i)].into_iter().collect(),
        ..Inventory::default()
    }
}

fn run(inv: &Inventory, sel: Selection) -> Plan {
    plan(inv, &sel, None, &Protected::default(), t(10_000)).unwrap()
}

fn retain(n: u32) -> Selection {
    Selection::Retain {
        full: Some(n),
        since: None,
    }
}

fn names(p: &Plan, id: i32) -> (Vec<String>, Vec<String>) {
    let i = p.instances.iter().find(|i| i.content_id == id);
    (
        i.map(|i| i.backups.iter().map(|b| b.name.clone()).collect())
            .unwrap_or_default(),
        i.map(|i| i.restore_points.clone()).unwrap_or_default(),
    )
}

fn wal_ranges(p: &Plan, id: i32) -> Vec<(u32, String, String)> {
    p.instances
        .iter()
        .find(|i| i.content_id == id)
        .map(|i| {
            i.wal
                .iter()
                .map(|w| (w.timeline.0, w.first.clone(), w.last.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Four full backups at segments 2, 6, 10, 14, points between them, WAL
/// 1..=20.
fn history() -> Inventory {
    single(instance(
        vec![
            backup(-1, "b1", 1, 2, 3, 10),
            backup(-1, "b2", 1, 6, 7, 20),
            backup(-1, "b3", 1, 10, 11, 30),
            backup(-1, "b4", 1, 14, 15, 40),
        ],
        vec![
            point(-1, "p0", 1, 1, 5),
            point(-1, "p1", 1, 4, 15),
            point(-1, "p2", 1, 8, 25),
            point(-1, "p3", 1, 12, 35),
            point(-1, "p4", 1, 17, 45),
        ],
        wal(1, 1, 20),
    ))
}

#[test]
fn retain_keeps_the_newest_and_what_they_need() {
    let p = run(&history(), retain(2));
    assert_eq!(
        names(&p, -1),
        (
            vec!["b1".into(), "b2".into()],
            vec!["p0".into(), "p1".into(), "p2".into()]
        )
    );
    // Everything before b3's start segment (10) goes.
    assert_eq!(
        wal_ranges(&p, -1),
        vec![(1, seg_name(1, 1), seg_name(1, 9))]
    );
    assert_eq!(p.wal_files(), 9);
    assert_eq!(p.bytes(), 200 + 9 * SEG);
    // Retaining as many as there are deletes no backup, only what no
    // backup reaches: p0 and the WAL before the oldest backup.
    for n in [4, 9] {
        let p = run(&history(), retain(n));
        assert_eq!(names(&p, -1), (vec![], vec!["p0".into()]));
        assert_eq!(
            wal_ranges(&p, -1),
            vec![(1, seg_name(1, 1), seg_name(1, 1))]
        );
    }
}

#[test]
fn a_kept_delta_keeps_its_chain() {
    let inv = single(instance(
        vec![
            backup(-1, "f1", 1, 2, 3, 10),
            delta(backup(-1, "d1", 1, 4, 5, 15), "f1"),
            backup(-1, "f2", 1, 6, 7, 20),
            delta(backup(-1, "d2", 1, 8, 9, 25), "f2"),
            backup(-1, "f3", 1, 10, 11, 30),
            delta(backup(-1, "d3", 1, 12, 13, 35), "d2"),
        ],
        vec![],
        wal(1, 1, 14),
    ));
    // retain 1: f3 and what is newer (d3), and d3's chain d2, f2.
    let p = run(&inv, retain(1));
    assert_eq!(names(&p, -1).0, vec!["f1", "d1"]);
    assert!(
        p.kept
            .iter()
            .any(|k| k.contains("backup f2") && k.contains("d3")),
        "{:?}",
        p.kept
    );
    assert!(
        p.kept.iter().any(|k| k.contains("backup d2")),
        "{:?}",
        p.kept
    );
    // f2's WAL is kept from its start (segment 6).
    assert_eq!(
        wal_ranges(&p, -1),
        vec![(1, seg_name(1, 1), seg_name(1, 5))]
    );

    // target f2: refused while d2 (and d3) depend on it; --cascade takes them.
    let e = plan(
        &inv,
        &Selection::Target {
            name: "f2".into(),
            cascade: false,
        },
        None,
        &Protected::default(),
        t(10_000),
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), crate::error::ExitCode::Usage);
    assert!(
        e.to_string().contains("d2") && e.to_string().contains("--cascade"),
        "{e}"
    );
    let p = run(
        &inv,
        Selection::Target {
            name: "f2".into(),
            cascade: true,
        },
    );
    assert_eq!(names(&p, -1).0, vec!["f2", "d2", "d3"]);
    // f1, d1 and f3 stay (not permanent: they keep the WAL after them).
    assert_eq!(
        wal_ranges(&p, -1),
        vec![(1, seg_name(1, 1), seg_name(1, 1))]
    );
}

#[test]
fn permanent_backups_stay_with_their_own_wal_only() {
    let mut inv = history();
    inv.instances.get_mut(&-1).unwrap().backups[0].permanent = true;
    let p = run(&inv, retain(1));
    assert_eq!(names(&p, -1).0, vec!["b2", "b3"]);
    assert!(p
        .kept
        .iter()
        .any(|k| k.contains("b1") && k.contains("permanent")));
    // b1 keeps 2..=3 and 4 (the segment after its end); b4 keeps from 14;
    // p4 (after b4) stays, p0..p3 go.
    assert_eq!(
        wal_ranges(&p, -1),
        vec![
            (1, seg_name(1, 1), seg_name(1, 1)),
            (1, seg_name(1, 5), seg_name(1, 13))
        ]
    );
    // p1..p3 are reached only from the permanent b1 (which keeps no WAL
    // after its end): they go; p0, before every backup, too.
    assert_eq!(names(&p, -1).1, vec!["p0", "p1", "p2", "p3"]);
    let e = plan(
        &inv,
        &Selection::Target {
            name: "b1".into(),
            cascade: false,
        },
        None,
        &Protected::default(),
        t(10_000),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--impermanent"), "{e}");
    let e = plan(
        &inv,
        &Selection::Everything { force: false },
        None,
        &Protected::default(),
        t(10_000),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    let p = run(&inv, Selection::Everything { force: true });
    assert_eq!(names(&p, -1).0.len(), 4);
    assert_eq!(p.wal_files(), 20);
}

#[test]
fn p0_before_every_backup_goes_with_retention() {
    let p = run(&history(), retain(3));
    assert_eq!(
        names(&p, -1),
        (vec!["b1".into()], vec!["p0".into(), "p1".into()])
    );
}

#[test]
fn bad_selections_are_refused() {
    let inv = history();
    let refused = |sel: Selection| {
        let e = plan(&inv, &sel, None, &Protected::default(), t(100)).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::Usage, "{sel:?}: {e}");
        e.to_string()
    };
    assert!(refused(retain(0)).contains("retain 0"));
    assert!(refused(Selection::BeforeTime(t(200))).contains("future"));
    assert!(refused(Selection::BeforeTime(t(50))).contains("every backup"));
    assert!(refused(Selection::BeforeName("nope".into())).contains("no backup \"nope\""));
    assert!(refused(Selection::Target {
        name: "nope".into(),
        cascade: false
    })
    .contains("cbdr list"));
    assert!(refused(Selection::RestorePoint("nope".into())).contains("no restore point"));
    let p = plan(
        &inv,
        &Selection::BeforeName("b3".into()),
        None,
        &Protected::default(),
        t(100),
    )
    .unwrap();
    assert_eq!(names(&p, -1).0, vec!["b1", "b2"]);
    let p = plan(
        &inv,
        &Selection::BeforeTime(t(20)),
        None,
        &Protected::default(),
        t(100),
    )
    .unwrap();
    assert_eq!(names(&p, -1).0, vec!["b1"]);
}

#[test]
fn timelines_follow_the_kept_backups() {
    // b1, b2 on timeline 1; promotion to timeline 2 at segment 9; b3 on 2.
    let mut w = wal(1, 1, 9);
    w.extend(wal(2, 9, 14));
    w.push(WalObject {
        name: "00000002.history".into(),
        size: 40,
        modified: None,
    });
    w.push(WalObject {
        name: format!("{}.partial", seg_name(1, 9)),
        size: SEG,
        modified: None,
    });
    let inv = single(instance(
        vec![
            backup(-1, "b1", 1, 2, 3, 10),
            backup(-1, "b2", 1, 6, 7, 20),
            backup(-1, "b3", 2, 11, 12, 30),
        ],
        vec![point(-1, "on1", 1, 8, 25), point(-1, "on2", 2, 13, 35)],
        w,
    ));
    let p = run(&inv, retain(2));
    assert_eq!(names(&p, -1), (vec!["b1".into()], vec![]));
    assert_eq!(
        wal_ranges(&p, -1),
        vec![(1, seg_name(1, 1), seg_name(1, 5))]
    );
    let p = run(&inv, retain(1));
    assert_eq!(
        names(&p, -1),
        (vec!["b1".into(), "b2".into()], vec!["on1".into()])
    );
    // Timeline 1 all goes (with its .partial); timeline 2 below b3's start
    // too; the history file stays.
    assert_eq!(
        wal_ranges(&p, -1),
        vec![
            (1, seg_name(1, 1), seg_name(1, 9)),
            (2, seg_name(2, 9), seg_name(2, 10))
        ]
    );
    assert_eq!(p.instances[0].wal[0].files, 10);
    assert!(p.instances[0].history.is_empty());
    assert!(p.instances[0].wal[0].contains(&format!("{}.partial", seg_name(1, 9))));
    assert!(!p.instances[0].wal[0].contains(&seg_name(2, 5)));
    let p = run(&inv, Selection::Everything { force: false });
    assert_eq!(p.instances[0].history, vec!["00000002.history"]);
}

#[test]
fn without_a_kept_backup_the_wal_stays() {
    let inv = single(instance(vec![], vec![], wal(1, 1, 5)));
    let p = run(&inv, retain(1));
    assert!(p.is_empty());
    let p = run(
        &inv,
        Selection::Garbage {
            grace: std::time::Duration::ZERO,
        },
    );
    assert!(p.is_empty());
    assert!(p.kept.iter().any(|k| k.contains("no backup")));
}

fn garbage_with_an_hours_grace(inv: &Inventory, now: DateTime<Utc>) -> Plan {
    plan(
        inv,
        &Selection::Garbage {
            grace: std::time::Duration::from_secs(3600),
        },
        None,
        &Protected::default(),
        now,
    )
    .unwrap()
}

#[test]
fn garbage_spares_young_wal_and_all_records() {
    let mut inv = history();
    let now = t(10_000);
    for o in &mut inv.instances.get_mut(&-1).unwrap().wal[..4] {
        o.modified = Some(now.into());
    }
    let p = garbage_with_an_hours_grace(&inv, now);
    // Segment 1 (before b1) is garbage, but young; nothing else is.
    assert!(p.is_empty(), "{p:?}");
    inv.instances.get_mut(&-1).unwrap().wal[0].modified =
        Some((now - chrono::Duration::hours(2)).into());
    let p = garbage_with_an_hours_grace(&inv, now);
    assert_eq!(
        wal_ranges(&p, -1),
        vec![(1, seg_name(1, 1), seg_name(1, 1))]
    );
    assert!(p.instances[0].backups.is_empty() && p.instances[0].restore_points.is_empty());
}

#[test]
fn leases_protect() {
    let inv = history();
    let mut prot = Protected::default();
    prot.backups
        .insert((-1, "b1".into()), "restore on h1".into());
    let p = plan(&inv, &retain(2), None, &prot, t(10_000)).unwrap();
    assert_eq!(names(&p, -1).0, vec!["b2"]);
    assert!(p.kept.iter().any(|k| k.contains("restore on h1")));
    let e = plan(
        &inv,
        &Selection::Target {
            name: "b1".into(),
            cascade: false,
        },
        None,
        &prot,
        t(10_000),
    )
    .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
}

fn cluster_inventory() -> Inventory {
    let mut inv = Inventory::default();
    for id in [-1, 0, 1] {
        let mut i = instance(vec![], vec![], wal(1, 1, 16));
        for (k, (start, at)) in [(2u64, 10i64), (6, 20), (10, 30)].iter().enumerate() {
            i.backups
                .push(backup(id, &format!("s{id}_{k}"), 1, *start, start + 1, *at));
            i.points
                .push(point(id, &format!("c{k}"), 1, start + 2, at + 1));
        }
        // An instance backup of its own (taken with --content-id), newest.
        if id == 0 {
            i.backups.push(backup(0, "own0", 1, 13, 14, 40));
        }
        inv.instances.insert(id, i);
    }
    for (k, (start, at)) in [(2u64, 10i64), (6, 20), (10, 30)].iter().enumerate() {
        let name = format!("c{k}");
        inv.cluster_backups.push(ClusterBackup {
            name: name.clone(),
            start_time: t(at - 1),
            stop_time: t(*at),
            restore_point: name.clone(),
            segments: [-1, 0, 1]
                .iter()
                .map(|&id| SegmentBackup {
                    content_id: id,
                    backup: format!("s{id}_{k}"),
                    start_lsn: Lsn(start * SEG + 40),
                    stop_lsn: Lsn((start + 1) * SEG + 100),
                    plain_bytes: 1000,
                    stored_bytes: 100,
                    chain: Vec::new(),
                })
                .collect(),
            base: None,
            permanent: false,
        });
        inv.cluster_points.push(ClusterRestorePoint {
            name: name.clone(),
            time: t(at + 1),
            barrier: Barrier::AdvisoryLock { key: 1 },
            barrier_millis: 1,
            segments: [-1, 0, 1]
                .iter()
                .map(|&id| SegmentPoint {
                    content_id: id,
                    lsn: Lsn((start + 2) * SEG + 500),
                    timeline: TimelineId(1),
                })
                .collect(),
        });
    }
    inv
}

#[test]
fn cluster_backups_go_as_a_whole() {
    let inv = cluster_inventory();
    let p = run(&inv, retain(2));
    assert_eq!(
        p.cluster_backups
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        vec!["c0"]
    );
    assert_eq!(p.cluster_restore_points, vec!["c0"]);
    for id in [-1, 0, 1] {
        assert_eq!(
            names(&p, id),
            (vec![format!("s{id}_0")], vec!["c0".to_string()]),
            "content {id}"
        );
        assert_eq!(
            wal_ranges(&p, id),
            vec![(1, seg_name(1, 1), seg_name(1, 5))]
        );
    }
    // On one instance: only its own backups count; the cluster's members
    // are not touched (and keep their WAL).
    let p = plan(&inv, &retain(1), Some(0), &Protected::default(), t(10_000)).unwrap();
    assert_eq!(names(&p, 0), (vec![], vec![]));
    assert_eq!(wal_ranges(&p, 0), vec![(1, seg_name(1, 1), seg_name(1, 1))]);
    assert_eq!(p.instances.len(), 1);
    let e = plan(
        &inv,
        &Selection::Target {
            name: "s0_1".into(),
            cascade: false,
        },
        Some(0),
        &Protected::default(),
        t(10_000),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cluster backup"), "{e}");
    // A cluster backup's restore point cannot go alone.
    let e = plan(
        &inv,
        &Selection::RestorePoint("c1".into()),
        None,
        &Protected::default(),
        t(10_000),
    )
    .unwrap_err();
    assert!(e.to_string().contains("delete target c1"), "{e}");
    let p = run(
        &inv,
        Selection::Target {
            name: "c2".into(),
            cascade: false,
        },
    );
    assert_eq!(p.cluster_backups[0].name, "c2");
    // c2's point is served by c1's backups still: it stays.
    assert!(p.cluster_restore_points.is_empty());
    assert_eq!(names(&p, 1), (vec!["s1_2".to_string()], vec![]));
}

#[test]
fn plans_round_trip_as_json() {
    let p = run(&cluster_inventory(), retain(1));
    let text = serde_json::to_string(&p).unwrap();
    let back: Plan = serde_json::from_str(&text).unwrap();
    assert_eq!(back, p);
}
