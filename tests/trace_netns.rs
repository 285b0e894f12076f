//! Real-network tests: the engine traces through routers built from network namespaces.
//! They need root (`ip netns`); without it they print why and pass, unless CI=true.

mod netns;

use netns::{Chain, Lab, hops, must_skip};

#[test]
fn chain_v4_udp_with_silent_router() {
    if must_skip() {
        return;
    }
    let mut lab = Lab::new("c4");
    let chain = Chain::build(&mut lab, 6, &[3], false);
    let out = lab.trace("h", &[&chain.target(false)]);
    let want: Vec<Option<String>> = (1..=7)
        .map(|k| (k != 3).then(|| chain.hop(k, false)))
        .collect();
    assert_eq!(hops(&out[0]), want, "{}", out[0]);
    assert_eq!(out[0]["reached"], true);
}
