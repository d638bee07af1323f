//! Accounts and sessions: register, login, logout, me, user, setRole.

use async_graphql::{Context, Enum, Object, SimpleObject, ID};
use graph::ids::UserId;
use graph::model::{self, User};

use super::{app, blocking, parse_id, viewer};
use crate::auth::{self, Viewer};
use crate::error::{ApiError, ApiResult};

/// What a user may do.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "Role")]
pub enum Role {
    /// Books tickets, follows people.
    Attendee,
    /// Creates venues, events and ticket types.
    Organizer,
    /// May do anything.
    Admin,
    /// Integrates through the API and webhooks.
    Partner,
}

impl From<Role> for model::Role {
    fn from(role: Role) -> model::Role {
        match role {
            Role::Attendee => model::Role::Attendee,
            Role::Organizer => model::Role::Organizer,
            Role::Admin => model::Role::Admin,
            Role::Partner => model::Role::Partner,
        }
    }
}

impl From<model::Role> for Role {
    fn from(role: model::Role) -> Role {
        match role {
            model::Role::Attendee => Role::Attendee,
            model::Role::Organizer => Role::Organizer,
            model::Role::Admin => Role::Admin,
            model::Role::Partner => Role::Partner,
        }
    }
}

/// A user as others see them; the email only to themself and admins.
pub struct UserObject {
    user: User,
    /// Set when the request itself just proved to be this user (register,
    /// login), before any token was attached to it.
    is_self: bool,
}

impl UserObject {
    /// A user, seen by the request's viewer.
    pub fn new(user: User) -> UserObject {
        UserObject { user, is_self: false }
    }

    /// A user seen by themself.
    fn own(user: User) -> UserObject {
        UserObject { user, is_self: true }
    }
}

#[Object(name = "User", serial)]
impl UserObject {
    async fn id(&self) -> ID {
        ID(self.user.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.user.name
    }

    async fn role(&self) -> Role {
        self.user.role.into()
    }

    /// Only to the user themself and to admins; null for everyone else.
    async fn email(&self, ctx: &Context<'_>) -> Option<&str> {
        let viewer = viewer(ctx);
        let allowed = self.is_self || viewer.is_admin() || viewer.user().is_some_and(|me| me.id == self.user.id);
        allowed.then_some(self.user.email.as_str())
    }

    /// Users following this one.
    async fn follower_count(&self, ctx: &Context<'_>) -> usize {
        app(ctx).graph.social().followers(self.user.id).len()
    }

    /// Users this one follows.
    async fn following_count(&self, ctx: &Context<'_>) -> usize {
        app(ctx).graph.social().following(self.user.id).len()
    }
}

/// A token and whose it is.
#[derive(SimpleObject)]
pub struct AuthPayload {
    token: String,
    user: UserObject,
}

#[derive(Default)]
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
    /// The signed-in user; null when anonymous.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<Option<UserObject>> {
        match viewer(ctx) {
            Viewer::Anonymous => Ok(None),
            Viewer::BadToken => Err(auth::bad_token()),
            Viewer::User { user, .. } => Ok(Some(UserObject::new(user.clone()))),
        }
    }

    /// A user by id; null when there is none.
    async fn user(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<UserObject>> {
        let id: UserId = parse_id("id", &id)?;
        Ok(app(ctx).graph.user(id)?.map(UserObject::new))
    }
}

#[derive(Default)]
pub struct IdentityMutation;

#[Object]
impl IdentityMutation {
    /// Creates an account (ATTENDEE or ORGANIZER) and signs it in.
    async fn register(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
        name: String,
        #[graphql(default_with = "Some(Role::Attendee)")] role: Option<Role>,
    ) -> ApiResult<AuthPayload> {
        let role = role.unwrap_or(Role::Attendee);
        if !matches!(role, Role::Attendee | Role::Organizer) {
            return Err(ApiError::bad_input("role", "self-service registration allows ATTENDEE or ORGANIZER"));
        }
        // Check cheap rules before the expensive hash.
        graph::rules::email(&email)?;
        graph::rules::required_text("name", &name, graph::rules::NAME_CHARS_MAX)?;
        graph::rules::password(&password)?;
        let app = app(ctx).clone();
        blocking(move || {
            let hash = auth::hash_password(&password)?;
            let user = app.graph.register(&email, &name, role.into(), Some(hash))?;
            let token = app.issue_token(user.id)?;
            Ok(AuthPayload { token, user: UserObject::own(user) })
        })
        .await
    }

    /// Signs in. Unknown email and wrong password get the same answer.
    /// After too many failures for one email, further tries wait.
    async fn login(&self, ctx: &Context<'_>, email: String, password: String) -> ApiResult<AuthPayload> {
        let app = app(ctx).clone();
        let email_key = graph::rules::email_key(&email);
        if let Some(wait) = app.limits.login_failures.blocked(&email_key) {
            app.metrics.rate_limited("login_failures");
            let message =
                format!("too many failed sign-ins for this email; retry in {} s", crate::limits::retry_seconds(wait));
            return Err(ApiError::RateLimited(message));
        }
        blocking(move || {
            let found = app.graph.user_by_email(&email)?;
            let stored = found.as_ref().and_then(|(_, hash)| hash.as_deref());
            let verified =
                password.len() <= 4 * graph::rules::PASSWORD_CHARS_MAX && auth::verify_password(&password, stored);
            match found {
                Some((user, _)) if verified => {
                    let token = app.issue_token(user.id)?;
                    Ok(AuthPayload { token, user: UserObject::own(user) })
                }
                _ => {
                    let _ = app.limits.login_failures.check(&email_key);
                    Err(ApiError::Unauthenticated("email or password is incorrect".into()))
                }
            }
        })
        .await
    }

    /// Revokes the token this request was made with.
    async fn logout(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        let Viewer::User { token_hash, .. } = viewer(ctx) else {
            viewer(ctx).require()?;
            return Err(ApiError::sign_in());
        };
        let (app, token_hash) = (app(ctx).clone(), *token_hash);
        blocking(move || Ok(app.graph.revoke_session(token_hash)?)).await?;
        Ok(true)
    }

    /// Changes a user's role. Admins only.
    async fn set_role(&self, ctx: &Context<'_>, user_id: ID, role: Role) -> ApiResult<UserObject> {
        let admin = viewer(ctx).require_role(&[model::Role::Admin], "setRole")?.id;
        let id: UserId = parse_id("userId", &user_id)?;
        let app = app(ctx).clone();
        // Every demotion is made by another admin, still one as it is made,
        // so one always remains.
        blocking(move || Ok(UserObject::new(app.graph.set_role_by(Some(admin), id, role.into())?))).await
    }
}
