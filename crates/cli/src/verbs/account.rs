//! Signing up, in and out: the password prompt and the session it leaves behind.

use std::io::{BufRead, IsTerminal};

use anyhow::Context;

use crate::{
    Ctx, Outcome,
    args::{Credentials, Output},
    output::{self, or_dash},
};

/// The password from standard input or the terminal; typed twice (`confirm`) for a new account.
fn password(credentials: &Credentials, confirm: bool) -> anyhow::Result<String> {
    let password = if credentials.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("failed to read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "no terminal to ask for the password on; pipe it in with --password-stdin"
            );
        }
        let password =
            rpassword::prompt_password("Password: ").context("failed to read the password")?;
        if confirm
            && rpassword::prompt_password("Repeat it: ").context("failed to read the password")?
                != password
        {
            anyhow::bail!("the passwords differ; nothing was changed");
        }
        password
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    Ok(password)
}

pub(crate) async fn signup(cx: &Ctx, credentials: Credentials) -> anyhow::Result<Outcome> {
    let password = password(&credentials, true)?;
    let response = cx.api.signup(&credentials.email, &password).await?;
    match cx.output {
        Output::Json => output::json(&response)?,
        Output::Table if response.session.is_some() => {
            println!("signed up and logged in to {} as {}", cx.api.server(), credentials.email)
        }
        Output::Table => println!(
            "signed up as {}; follow the link in the confirmation email, then `nimctl login`",
            credentials.email
        ),
    }
    Ok(Outcome::Success)
}

pub(crate) async fn login(cx: &Ctx, credentials: Credentials) -> anyhow::Result<Outcome> {
    let password = password(&credentials, false)?;
    let session = cx.api.login(&credentials.email, &password).await?;
    match cx.output {
        Output::Json => output::json(&session.user)?,
        Output::Table => {
            println!("logged in to {} as {}", cx.api.server(), or_dash(session.user.email))
        }
    }
    Ok(Outcome::Success)
}
