//! `opsctl completion SHELL`: completion scripts generated from the command
//! line's own definition by `clap_complete`, so they never drift from it.

use std::io::{self, Write};

use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell as Generator;

use crate::Cli;

/// The shells opsctl prints completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// GNU Bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl Shell {
    fn generator(self) -> Generator {
        match self {
            Shell::Bash => Generator::Bash,
            Shell::Zsh => Generator::Zsh,
            Shell::Fish => Generator::Fish,
        }
    }
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell.generator(), &mut Cli::command(), "opsctl", &mut script);
    script
}

/// Writes the completion script for `shell` to `out`. The script is made in
/// memory first: the generator cannot report a write error (a closed pipe)
/// other than by panicking.
pub fn print(shell: Shell, out: &mut impl Write) -> io::Result<()> {
    out.write_all(&script(shell))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_completes_the_commands_and_global_flags() {
        for shell in Shell::value_variants() {
            let text = String::from_utf8(script(*shell)).unwrap();
            for word in ["opsctl", "settings", "watch", "create", "completion", "addr", "output"] {
                assert!(text.contains(word), "{shell:?} completions lack {word:?}:\n{text}");
            }
        }
        let bash = String::from_utf8(script(Shell::Bash)).unwrap();
        assert!(bash.contains("complete -F _opsctl"), "{bash}");
        let zsh = String::from_utf8(script(Shell::Zsh)).unwrap();
        assert!(zsh.starts_with("#compdef opsctl"), "{zsh}");
        let fish = String::from_utf8(script(Shell::Fish)).unwrap();
        assert!(fish.contains("complete -c opsctl"), "{fish}");
    }
}
