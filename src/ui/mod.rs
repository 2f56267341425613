pub async fn run(_e: &mut crate::engine::EngineHandle, _fps: u32) -> anyhow::Result<()> {
    Ok(())
}
