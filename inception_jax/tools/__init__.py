"""Command-line tools on top of the library and the trainer: `convert`, `fid`, `sweep`, `report`, `costs`,
`bench` and `zoo`. Anything that imports PyTorch lives here, imported only when a tool needs it."""
