"""Hardware profiles as TOML data files; a package only so that an installed wheel carries them."""
