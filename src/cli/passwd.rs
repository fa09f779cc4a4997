//! `portcullis passwd USER`: prints an htpasswd line with an argon2id hash. The password is
//! read from a prompt without echo, or from the first line of stdin when it is not a terminal.

use std::{
    io::{BufRead, IsTerminal},
    process::ExitCode,
};

use crate::keys::htpasswd;

pub fn run(user: &str) -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let again = rpassword::prompt_password("Again: ");
        match (first, again) {
            (Ok(first), Ok(again)) if first == again => first,
            (Ok(_), Ok(_)) => {
                eprintln!("portcullis passwd: the passwords differ");
                return ExitCode::FAILURE;
            }
            (Err(err), _) | (_, Err(err)) => {
                eprintln!("portcullis passwd: cannot read the password: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(err) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("portcullis passwd: cannot read stdin: {err}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        eprintln!("portcullis passwd: the password is empty");
        return ExitCode::FAILURE;
    }
    match htpasswd::argon2id_line(user, &password) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("portcullis passwd: {err}");
            ExitCode::from(2)
        }
    }
}
