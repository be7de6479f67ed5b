//! The short soak in the suite: `ilp-bench soak` with ≥ 20 000 Prepares through three
//! `ilp-connector` processes while the middle one is SIGKILLed and restarted 3 times and the
//! fulfiller stalls. Every Prepare must get exactly one answer. The full run (1 000 000
//! packets) is in bench/RESULTS.md.

use std::process::Command;

#[test]
fn soak_with_kills_answers_every_prepare_exactly_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_ilp-bench"))
        .args([
            "soak",
            "--connector",
            env!("CARGO_BIN_EXE_ilp-connector"),
            "--packets",
            "20000",
            "--kills",
            "3",
            "--kill-every-ms",
            "1000",
            "--json",
        ])
        .output()
        .expect("run ilp-bench soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report; stdout: {stdout}\nstderr: {stderr}"));
    println!("{report}");
    assert_eq!(report["unanswered"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["unknown"], 0, "{report}");
    assert!(report["sent"].as_u64().unwrap() >= 20_000, "{report}");
    assert_eq!(report["answered"], report["sent"], "{report}");
    assert!(report["kills"].as_u64().unwrap() >= 3, "{report}");
    assert!(out.status.success(), "{stderr}");
}
