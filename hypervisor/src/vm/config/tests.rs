use super::*;
use std::vec::Vec;

#[test]
fn an_elf_line() {
    let s = parse("vm=alpha elf mem=32M on_triple_fault=reset mode=work burn=3").unwrap();
    assert_eq!(s.names.as_slice(), ["alpha"]);
    assert_eq!(
        (s.role, s.mem, s.on_triple_fault),
        (Role::Elf, Some(32 << 20), Some(TripleFault::Reset))
    );
    assert_eq!(s.args.as_str(), "mode=work burn=3");
}

#[test]
fn shared_linux_modules_with_a_quoted_command_line() {
    let k = parse(
        r#"/boot/vmlinuz vm=web,db kernel mem=96M cmdline="console=ttyS0,115200 quiet x=\"y\"""#,
    )
    .unwrap();
    assert_eq!(k.names.as_slice(), ["web", "db"]);
    assert_eq!(
        k.cmdline.as_deref(),
        Some(r#"console=ttyS0,115200 quiet x="y""#)
    );
    // GRUB quotes a whole argument that has spaces.
    let k2 = parse(r#"vm=c kernel "cmdline=console=ttyS0 quiet""#).unwrap();
    assert_eq!(k2.cmdline.as_deref(), Some("console=ttyS0 quiet"));
    let i = parse("vm=web,db initrd").unwrap();
    let (plans, errors) = plan(&[(0, k), (1, i), (2, k2)]);
    assert!(errors.is_empty(), "{errors:?}");
    let by: Vec<_> = plans
        .iter()
        .map(|p| (p.name.as_str(), p.image, p.initrd, p.mem))
        .collect();
    assert_eq!(
        by,
        [
            ("web", 0, Some(1), 96 << 20),
            ("db", 0, Some(1), 96 << 20),
            ("c", 2, None, DEFAULT_LINUX_MEM)
        ]
    );
    assert_eq!(plans[2].args.as_str(), "console=ttyS0 quiet");
}

#[test]
fn default_command_line() {
    let (plans, _) = plan(&[(0, parse("vm=k kernel").unwrap())]);
    assert_eq!(plans[0].args.as_str(), DEFAULT_CMDLINE);
}

#[test]
fn plan_errors_leave_the_good_vms() {
    let mods = [
        (0, parse("vm=a,b kernel").unwrap()),
        (1, parse("vm=b kernel").unwrap()),
        (2, parse("vm=c initrd").unwrap()),
        (3, parse("vm=e elf").unwrap()),
        (4, parse("vm=e initrd").unwrap()),
        (5, parse("vm=a initrd").unwrap()),
        (6, parse("vm=a initrd").unwrap()),
    ];
    let (plans, errors) = plan(&mods);
    let names: Vec<_> = plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["b"],
        "a: two initrds, e: initrd for elf; b: the first kernel wins"
    );
    let text: Vec<std::string::String> = errors
        .iter()
        .map(|e| std::format!("vm {}: {e}", e.name()))
        .collect();
    assert!(
        text.contains(&"vm b: module 1 describes it again (module 0 already does)".into()),
        "{text:?}"
    );
    assert!(text.contains(&"vm c: an initrd but no kernel module".into()));
    assert!(text.contains(&"vm e: an initrd is only for a kernel".into()));
    assert!(text.contains(&"vm a: more than one initrd module names it".into()));
    let (plans, _) = plan(&[
        (0, parse("vm=ok elf").unwrap()),
        (1, parse("vm=c initrd").unwrap()),
    ]);
    assert_eq!(plans.len(), 1);
}

#[test]
fn every_error() {
    assert_eq!(parse("elf mem=8M"), Err(SpecError::NotAVm));
    assert_eq!(parse(""), Err(SpecError::NotAVm));
    assert_eq!(parse("vm=Bad elf"), Err(SpecError::BadName(snippet("Bad"))));
    assert_eq!(
        parse("vm=a,lazarus elf"),
        Err(SpecError::BadName(snippet("lazarus")))
    );
    assert_eq!(parse("vm=a,,b elf"), Err(SpecError::BadName(snippet(""))));
    assert_eq!(parse("vm=a"), Err(SpecError::NoRole));
    assert_eq!(
        parse("vm=a bzimage"),
        Err(SpecError::NotKeyValue(snippet("bzimage")))
    );
    assert_eq!(parse("vm=a elf kernel"), Err(SpecError::TwoRoles));
    assert_eq!(
        parse("vm=a elf mem=3M"),
        Err(SpecError::BadMem(snippet("3M")))
    );
    assert_eq!(
        parse("vm=a elf mem=5M"),
        Err(SpecError::BadMem(snippet("5M")))
    );
    assert_eq!(
        parse("vm=a elf mem=8M mem=8M"),
        Err(SpecError::Duplicate("mem"))
    );
    assert_eq!(parse("vm=a vm=b elf"), Err(SpecError::Duplicate("vm")));
    assert_eq!(
        parse("vm=a elf on_triple_fault=explode"),
        Err(SpecError::BadTripleFault(snippet("explode")))
    );
    assert_eq!(
        parse("vm=a elf cmdline=x"),
        Err(SpecError::NotFor {
            word: snippet("cmdline="),
            role: "elf"
        })
    );
    assert_eq!(
        parse("vm=a kernel mode=x"),
        Err(SpecError::NotFor {
            word: snippet("mode=x"),
            role: "kernel"
        })
    );
    assert!(matches!(
        parse("vm=a initrd mem=8M"),
        Err(SpecError::NotFor { role: "initrd", .. })
    ));
    assert_eq!(
        parse("vm=a kernel cmdline=\"open"),
        Err(SpecError::UnterminatedQuote)
    );
    let long = std::format!("vm=a elf x={}", "y".repeat(300));
    assert_eq!(parse(&long), Err(SpecError::WordTooLong));
    let many = std::format!("vm=a elf {}", "k=vv ".repeat(60));
    assert!(matches!(parse(&many), Err(SpecError::ArgsTooLong)));
    assert_eq!(
        std::format!("{}", SpecError::UnknownRole(snippet("x"))),
        "unknown role 'x' (elf, kernel or initrd)"
    );
}
