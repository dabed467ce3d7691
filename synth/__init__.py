"""mathforge.synth: synthesis backends and the Skywork-Math / JiuZhang3.0 pipelines."""
