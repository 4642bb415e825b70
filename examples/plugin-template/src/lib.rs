use latentflow_plugin_api::sdk::prelude::*;

fn greet() -> NodeDef {
    NodeDef::new("hello.greet", |ctx, _inputs, params| {
        let text = format!("Hello, {}!", params.str("name")?);
        ctx.info(&text);
        Ok(vec![Value::from(text)])
    })
    .doc("Greets someone.")
    .output("text", PortType::String, "the greeting")
    .param(Param::string("name").default("world").doc("who to greet"))
}

latentflow_plugin_api::export_plugin!(
    PluginDef::new("hello", env!("CARGO_PKG_VERSION")).node(greet())
);
