//! Constant and arithmetic nodes on scalars (handy in graphs, and used by the benchmarks).

use latentflow_plugin_api::sdk::prelude::*;

/// `core.int`, `core.float`, `core.string`, `core.add_int`.
pub fn nodes() -> Vec<NodeDef> {
    vec![
        NodeDef::new("core.int", |_, _, p| Ok(vec![Value::Int(p.int("value")?)]))
            .doc("A constant integer.")
            .output("value", PortType::Int, "the integer")
            .param(Param::int("value").default(0).doc("the value")),
        NodeDef::new("core.float", |_, _, p| {
            Ok(vec![Value::Float(p.f64("value")?)])
        })
        .doc("A constant number.")
        .output("value", PortType::Float, "the number")
        .param(Param::float("value").default(0.0).doc("the value")),
        NodeDef::new("core.string", |_, _, p| {
            Ok(vec![Value::from(p.str("value")?)])
        })
        .doc("A constant string (a prompt, a file name).")
        .output("value", PortType::String, "the string")
        .param(Param::string("value").default("").doc("the value")),
        NodeDef::new("core.add_int", |_, i, p| {
            let a = i.int("a")?;
            let b = if i.is_connected("b") { i.int("b")? } else { 0 };
            Ok(vec![Value::Int(
                a.wrapping_add(b).wrapping_add(p.int("add")?),
            )])
        })
        .doc("Integer addition: a + b + add.")
        .input("a", PortType::Int, "first term")
        .optional_input("b", PortType::Int, "second term (0 when unconnected)")
        .output("value", PortType::Int, "the sum")
        .param(
            Param::int("add")
                .default(0)
                .doc("a constant added to the sum"),
        ),
    ]
}
