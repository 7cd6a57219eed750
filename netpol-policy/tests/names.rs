//! DNS name matching as Cilium documents it, property-tested. No root needed.

use netpol_policy::names::{Name, NameMatch};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9_][a-z0-9_-]{0,10}"
}

fn name() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(label(), 1..5)
}

/// Upper-cases the characters `mask` picks.
fn recase(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| if mask >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
        .collect()
}

proptest! {
    #[test]
    fn a_name_matches_itself_in_any_case_with_or_without_the_dot(labels in name(), mask in any::<u64>(), dot in any::<bool>()) {
        let n = labels.join(".");
        let written = format!("{}{}", recase(&n, mask), if dot { "." } else { "" });
        let m = NameMatch::name(&written).unwrap();
        prop_assert!(m.matches(&Name::parse(&n).unwrap()));
        let shouted = Name::parse(&(n.to_uppercase() + ".")).unwrap();
        prop_assert!(m.matches(&shouted));
        // A pattern without a star is the same name.
        prop_assert_eq!(NameMatch::pattern(&written).unwrap(), m);
    }

    #[test]
    fn a_star_stands_for_any_part_of_one_label_never_for_a_dot(labels in name(), at in any::<prop::sample::Index>(),
                                                              cut in 0usize..12, extra in label()) {
        let i = at.index(labels.len());
        let mut globbed = labels.clone();
        let keep = cut.min(labels[i].len());
        globbed[i] = format!("{}*", &labels[i][..keep]);
        // (A lone star is the match-everything pattern, tested below.)
        prop_assume!(globbed.join(".") != "*");
        let pattern = NameMatch::pattern(&globbed.join(".")).unwrap();
        prop_assert!(pattern.matches(&Name::parse(&labels.join(".")).unwrap()));
        // One label more where the star is: a star never spans a dot.
        let mut deeper = labels.clone();
        deeper.insert(i, extra);
        prop_assert!(!pattern.matches(&Name::parse(&deeper.join(".")).unwrap()));
        // One label fewer never matches either.
        if labels.len() > 1 {
            let mut shorter = labels.clone();
            shorter.remove(i);
            prop_assert!(!pattern.matches(&Name::parse(&shorter.join(".")).unwrap()));
        }
    }

    #[test]
    fn a_lone_star_matches_every_name(labels in name()) {
        prop_assert!(NameMatch::pattern("*").unwrap().matches(&Name::parse(&labels.join(".")).unwrap()));
    }
}

#[test]
fn the_lab_and_the_documented_forms() {
    let n = |s: &str| Name::parse(s).unwrap();
    let p = |s: &str| NameMatch::pattern(s).unwrap();
    assert!(p("*.songlaa.com").matches(&n("www.songlaa.com")));
    assert!(!p("*.songlaa.com").matches(&n("songlaa.com")), "the star needs a label");
    assert!(!p("*.songlaa.com").matches(&n("a.b.songlaa.com")), "one label only");
    assert!(p("*songlaa.com").matches(&n("songlaa.com")), "a star may stand for nothing");
    assert!(!p("*songlaa.com").matches(&n("www.songlaa.com")), "nor for a dot");
    assert!(p("sub*.songlaa.com").matches(&n("sub-1.songlaa.com")));
    assert!(!p("songlaa.com").matches(&n("notsonglaa.com")));
    assert!(NameMatch::name("SongLaa.Com.").unwrap().matches(&n("songlaa.com")));
    // A hostile pattern costs no more than its length times the label's.
    let hostile = format!("{}b", "*a".repeat(30));
    assert!(!p(&hostile).matches(&n(&"a".repeat(63))));
}

#[test]
fn what_is_not_a_name_is_refused_saying_why() {
    let e = |s: &str| NameMatch::name(s).unwrap_err().to_string();
    assert!(e("").contains("empty"));
    assert!(e("a..b").contains("1 to 63"));
    assert!(e(&format!("{}.com", "a".repeat(64))).contains("1 to 63"));
    assert!(e(&vec!["abcdefghi"; 26].join(".")).contains("more than 253"));
    assert!(e("ex ample.com").contains("' ' is not allowed"));
    assert!(e("*.example.com").contains("'*' is not allowed"), "a star is a pattern's, not a name's");
    assert!(NameMatch::pattern("a.*.*").is_ok());
    assert!(NameMatch::pattern("a/b").is_err());
}

proptest! {
    /// The glob against a regular expression written from the documented semantics.
    #[test]
    fn patterns_agree_with_a_regular_expression(globs in prop::collection::vec("[ab*]{1,6}", 1..4),
                                               labels in prop::collection::vec("[ab]{1,6}", 1..4)) {
        let pattern = globs.join(".");
        prop_assume!(pattern != "*");
        let re = format!("^{}$", pattern.replace('.', "\\.").replace('*', "[a-z0-9_-]*"));
        let want = regex::Regex::new(&re).unwrap().is_match(&labels.join("."));
        let got = NameMatch::pattern(&pattern).unwrap().matches(&Name::parse(&labels.join(".")).unwrap());
        prop_assert_eq!(got, want, "{} vs {}", pattern, labels.join("."));
    }
}
