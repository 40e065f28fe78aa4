//! The mesh ([`Mesh`]) as text: `meshd status --dot` for Graphviz, `meshd status --all` as a
//! table of every pair, a line for each end's view.

use std::fmt::Write;

use super::mesh::{Mesh, MeshPair, MeshView};

/// Fill colours of node states and line colours of health, shared with the page's legend.
fn colour(word: &str) -> &'static str {
    match word {
        "self" => "#cfe2ff",
        "alive" | "ok" => "#2e7d32",
        "suspect" | "degraded" => "#ef8f00",
        "down" => "#c62828",
        _ => "#9e9e9e",
    }
}

/// A Graphviz `graph`: a node per mesh node (name, subnet, state), an edge per pair labelled
/// with each end's path, coloured by the pair's health, the reason as its tooltip.
pub fn dot(m: &Mesh) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "graph mesh {{");
    let _ = writeln!(
        o,
        "  label=\"{}\"; labelloc=t; fontname=\"sans-serif\";",
        esc(&format!(
            "meshd: the mesh as {} sees it at {} UTC",
            m.viewer, m.at
        ))
    );
    let _ = writeln!(
        o,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"sans-serif\", fillcolor=\"#ffffff\"];"
    );
    let _ = writeln!(o, "  edge [fontname=\"sans-serif\", fontsize=10];");
    for n in &m.nodes {
        let fill = match n.state.as_str() {
            "self" => colour("self"),
            "down" => "#ffcdd2",
            "suspect" => "#ffe0b2",
            "alive" => "#c8e6c9",
            _ => "#eeeeee",
        };
        let subnet = n.subnet.as_deref().unwrap_or("-");
        let _ = writeln!(
            o,
            "  \"{}\" [label=\"{}\\n{}\\n{}\", fillcolor=\"{fill}\"];",
            esc(&n.name),
            esc(&n.name),
            esc(subnet),
            esc(&n.state)
        );
    }
    for p in &m.pairs {
        let style = if p.health == "down" {
            "dashed"
        } else {
            "solid"
        };
        let _ = writeln!(
            o,
            "  \"{}\" -- \"{}\" [label=\"{}\", color=\"{}\", style={style}, tooltip=\"{}\"];",
            esc(&p.a),
            esc(&p.b),
            edge_label(p),
            colour(&p.health),
            esc(p.reason.as_deref().unwrap_or(&p.health))
        );
    }
    let _ = writeln!(o, "}}");
    o
}

/// One path name when both ends agree, else each end's (escaped for a quoted string).
fn edge_label(p: &MeshPair) -> String {
    let first = p.views.first().map(|v| v.path.as_str());
    if !p.views.is_empty() && p.views.iter().all(|v| Some(v.path.as_str()) == first) {
        let v = &p.views[0];
        let rtt = rtt(v).map(|r| format!(" {r}")).unwrap_or_default();
        return esc(&format!("{}{rtt} mtu {}", v.path, v.mtu));
    }
    if p.views.is_empty() {
        return esc(&p.health);
    }
    p.views
        .iter()
        .map(|v| esc(&format!("{}: {}", v.reporter, v.path)))
        .collect::<Vec<_>>()
        .join("\\n")
}

fn rtt(v: &MeshView) -> Option<String> {
    v.rtt_ms.map(|ms| format!("{ms:.2} ms"))
}

/// Graphviz's quoted strings: backslash and quote escaped, control characters dropped.
fn esc(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// Every pair, a line per end that reported it, and one for a pair nobody reported on.
pub fn table(m: &Mesh) -> String {
    let mut o = String::new();
    let count = |h: &str| m.pairs.iter().filter(|p| p.health == h).count();
    let _ = writeln!(
        o,
        "mesh as {} sees it at {} UTC: {} nodes, {} pairs ({} ok, {} degraded, {} down, {} unknown)",
        m.viewer,
        m.at,
        m.nodes.len(),
        m.pairs.len(),
        count("ok"),
        count("degraded"),
        count("down"),
        count("unknown")
    );
    let _ = writeln!(
        o,
        "{:<16} {:<16} {:<18} {:>10} {:>5}  {:<9} {:<20}  reason",
        "from", "to", "path", "rtt", "mtu", "health", "reported"
    );
    for p in &m.pairs {
        if p.views.is_empty() {
            let _ = writeln!(
                o,
                "{:<16} {:<16} {:<18} {:>10} {:>5}  {:<9} {:<20}  {}",
                p.a,
                p.b,
                "-",
                "-",
                "-",
                p.health,
                "-",
                p.reason.as_deref().unwrap_or("")
            );
            continue;
        }
        for v in &p.views {
            let reported = if v.reporter == m.viewer {
                "here, now".to_owned()
            } else {
                format!("by {}, {} s ago", v.reporter, v.age_secs)
            };
            let health = if p.health == "down" {
                "down"
            } else {
                &v.health
            };
            let reason = match (p.health.as_str(), &v.reason) {
                ("down", _) => p.reason.clone().unwrap_or_default(),
                (_, Some(r)) => r.clone(),
                (_, None) => String::new(),
            };
            let path = match v.route.as_str() {
                "direct" => v.path.clone(),
                route => format!("{} {route}", v.path),
            };
            let _ = writeln!(
                o,
                "{:<16} {:<16} {:<18} {:>10} {:>5}  {:<9} {:<20}  {reason}",
                v.reporter,
                v.peer,
                path,
                rtt(v).unwrap_or_else(|| "-".into()),
                v.mtu,
                health,
                reported
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::status::mesh::tests::three;

    #[test]
    fn dot_has_a_node_per_node_and_an_edge_per_pair() {
        let d = dot(&three());
        assert!(d.starts_with("graph mesh {") && d.trim_end().ends_with('}'));
        assert_eq!(d.matches(" -- ").count(), 3);
        assert!(
            d.contains("\"a\" [label=\"a\\n10.244.1.0/24\\nself\""),
            "{d}"
        );
        assert!(
            d.contains("\"b\" -- \"c\" [label=\"userspace 0.42 ms mtu 1450\""),
            "{d}"
        );
        assert!(
            d.contains("\"a\" -- \"b\" [label=\"kernel-vxlan mtu 1450\""),
            "{d}"
        );
        let mut m = three();
        m.pairs[2].views[1].path = "host-gw".into();
        let d = dot(&m);
        assert!(d.contains("[label=\"b: userspace\\nc: host-gw\""), "{d}");
        assert!(d.contains("color=\"#ef8f00\""), "the degraded pair: {d}");
        assert_eq!(esc("a\"b\\c\u{1b}"), "a\\\"b\\\\c");
    }

    #[test]
    fn the_table_has_a_line_per_view() {
        let t = table(&three());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("3 nodes, 3 pairs (2 ok, 1 degraded, 0 down, 0 unknown)"));
        assert_eq!(lines.len(), 2 + 6);
        assert!(lines.iter().any(|l| l.starts_with("c ")
            && l.contains(" b ")
            && l.contains("degraded")
            && l.contains("by c, 4 s ago")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("a ") && l.contains("here, now")));
    }
}
