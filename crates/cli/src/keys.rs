//! `wangge keygen` and `wangge token`: the development issuer. A production deployment's identity
//! provider signs tokens instead; the tiers only need its public keys.

use std::path::PathBuf;

use anyhow::Context;
use wangge_auth::{Claims, SigningKey, dev};

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where the key pair goes.
    #[arg(long, default_value = ".wangge/keys")]
    dir: PathBuf,
    /// The key id: the files are `<name>.key.pem` (private, mode 600) and `<name>.pub.pem`.
    #[arg(long, default_value = "dev")]
    name: String,
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let (private, public) = wangge_auth::keys::generate(&args.dir, &args.name)?;
    println!(
        "private key (signs tokens, keep it secret): {}",
        private.display()
    );
    println!(
        "public key (give it to every tier: auth.public_keys): {}",
        public.display()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The signing key (`<key id>.key.pem`).
    #[arg(
        long,
        env = "WANGGE_SIGNING_KEY",
        default_value = ".wangge/keys/dev.key.pem"
    )]
    key: PathBuf,
    /// A demo persona (gw-<grid>, cs-<community>, op-/dc-/sv-/au-/admin-<12-digit org>,
    /// dh-<department>, admin, observer); or give --subject with --role and --org instead.
    persona: Option<String>,
    /// The subject (the person's account id).
    #[arg(long, conflicts_with = "persona", requires = "role")]
    subject: Option<String>,
    /// A role (grid_worker, community_staff, street_operator, duty_chief, district_operator,
    /// department_handler, supervisor, auditor, admin, leader); repeat for several.
    #[arg(long)]
    role: Vec<String>,
    /// An org code the roles apply in (district, street, community or grid); repeat for several.
    #[arg(long)]
    org: Vec<String>,
    /// A department code (for department handlers); repeat for several.
    #[arg(long)]
    department: Vec<String>,
    /// How long the token lives, in seconds.
    #[arg(long, default_value_t = 8 * 3600)]
    ttl_secs: i64,
}

pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let now = dev::now();
    let claims = match (&args.persona, &args.subject) {
        (Some(persona), _) => {
            dev::persona(persona, now, args.ttl_secs).map_err(anyhow::Error::msg)?
        }
        (None, Some(subject)) => Claims {
            roles: args.role.clone(),
            orgs: args.org.clone(),
            departments: args.department.clone(),
            ..Claims::new(subject, &[], &[], &[], now, args.ttl_secs)
        },
        (None, None) => anyhow::bail!("name a persona, or give --subject with --role and --org"),
    };
    // What the tier will check, checked here first, so a typo fails now and not at the first call.
    wangge_auth::Caller::try_from(claims.clone())?;
    let key = SigningKey::load(&args.key).with_context(|| {
        format!(
            "signing key {} (wangge keygen makes one)",
            args.key.display()
        )
    })?;
    println!("{}", key.issue(&claims)?);
    Ok(())
}
