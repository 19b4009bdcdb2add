//! The Security service: users, roles and tokens (`admin:security`), and
//! WhoAmI (any valid token).

use opsd_cluster::ClusterNode;
use opsd_proto::time;
use opsd_proto::v1::security_server::Security;
use opsd_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, CreateUserRequest, DeleteRoleRequest, DeleteUserRequest, GetRoleRequest,
    GetTokenRequest, GetUserRequest, ListRolesRequest, ListRolesResponse, ListTokensRequest, ListTokensResponse,
    ListUsersRequest, ListUsersResponse, PutRoleRequest, RevokeTokenRequest, Role, Token, User, WhoAmIRequest,
    WhoAmIResponse,
};
use tonic::{Request, Response, Status};

use super::caller::{require, Caller};
use super::{barrier, propose, read_status};
use crate::domain::security::{self as sec, Object, RoleRecord, TokenRecord, UserRecord, Verb};
use crate::domain::Command;
use crate::engine;

/// The longest token lifetime, in seconds (100 years).
pub const MAX_TTL_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// Serves users, roles and tokens from a cluster node.
pub struct SecurityService {
    node: ClusterNode,
}

impl SecurityService {
    /// A service backed by `node`.
    pub fn new(node: ClusterNode) -> Self {
        SecurityService { node }
    }

    async fn read_user(&self, name: &str) -> Result<UserRecord, Status> {
        sec::read_user(&self.node.reader().view(), name)
            .map_err(read_status)?
            .ok_or_else(|| Status::not_found(format!("user {name:?} not found")))
    }

    async fn read_role(&self, name: &str) -> Result<RoleRecord, Status> {
        sec::read_role(&self.node.reader().view(), name)
            .map_err(read_status)?
            .ok_or_else(|| Status::not_found(format!("role {name:?} not found")))
    }

    async fn read_token(&self, id: &str) -> Result<TokenRecord, Status> {
        sec::read_token(&self.node.reader().view(), id)
            .map_err(read_status)?
            .ok_or_else(|| Status::not_found(format!("token {id:?} not found")))
    }
}

fn admin<T>(req: &Request<T>) -> Result<&Caller, Status> {
    require(req, Verb::Admin, &Object::Security)
}

fn name_of(field: &str, name: &str) -> Result<(), Status> {
    sec::validate_name(field, name).map_err(Status::invalid_argument)
}

fn user_to_proto(u: UserRecord) -> User {
    User {
        name: u.name,
        roles: u.roles,
        token_ids: u.tokens.into_iter().collect(),
        created_at: Some(time::timestamp(u.created_at_ms)),
    }
}

fn role_to_proto(r: RoleRecord) -> Role {
    Role {
        name: r.name,
        rules: r.rules.iter().map(|r| r.to_string()).collect(),
        builtin: r.builtin,
        users: r.users.into_iter().collect(),
    }
}

fn token_to_proto(t: TokenRecord) -> Token {
    Token {
        id: t.id,
        user: t.user,
        created_at: Some(time::timestamp(t.created_at_ms)),
        expires_at: t.expires_at_ms.map(time::timestamp),
        description: t.description,
    }
}

#[tonic::async_trait]
impl Security for SecurityService {
    async fn create_user(&self, req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        admin(&req)?;
        let req = req.into_inner();
        name_of("name", &req.name)?;
        for role in &req.roles {
            name_of("roles", role)?;
        }
        let cmd = Command::CreateUser {
            name: req.name.clone(),
            roles: req.roles,
            at_ms: engine::now_ms(),
        };
        propose(&self.node, cmd).await?;
        Ok(Response::new(user_to_proto(self.read_user(&req.name).await?)))
    }

    async fn list_users(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        admin(&req)?;
        barrier(&self.node, false).await?;
        let users = sec::list_users(&self.node.reader().view()).map_err(read_status)?;
        Ok(Response::new(ListUsersResponse {
            users: users.into_iter().map(user_to_proto).collect(),
        }))
    }

    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        admin(&req)?;
        let name = req.into_inner().name;
        name_of("name", &name)?;
        barrier(&self.node, false).await?;
        Ok(Response::new(user_to_proto(self.read_user(&name).await?)))
    }

    async fn delete_user(&self, req: Request<DeleteUserRequest>) -> Result<Response<User>, Status> {
        admin(&req)?;
        let name = req.into_inner().name;
        name_of("name", &name)?;
        barrier(&self.node, false).await?;
        let user = self.read_user(&name).await?;
        propose(&self.node, Command::DeleteUser { name }).await?;
        Ok(Response::new(user_to_proto(user)))
    }

    async fn put_role(&self, req: Request<PutRoleRequest>) -> Result<Response<Role>, Status> {
        admin(&req)?;
        let req = req.into_inner();
        name_of("name", &req.name)?;
        if req.rules.is_empty() {
            return Err(Status::invalid_argument("rules: a role needs at least one rule"));
        }
        for rule in &req.rules {
            sec::Rule::parse(rule).map_err(|e| Status::invalid_argument(format!("rules: {e}")))?;
        }
        let cmd = Command::PutRole {
            name: req.name.clone(),
            rules: req.rules,
        };
        propose(&self.node, cmd).await?;
        Ok(Response::new(role_to_proto(self.read_role(&req.name).await?)))
    }

    async fn list_roles(&self, req: Request<ListRolesRequest>) -> Result<Response<ListRolesResponse>, Status> {
        admin(&req)?;
        barrier(&self.node, false).await?;
        let roles = sec::list_roles(&self.node.reader().view()).map_err(read_status)?;
        Ok(Response::new(ListRolesResponse {
            roles: roles.into_iter().map(role_to_proto).collect(),
        }))
    }

    async fn get_role(&self, req: Request<GetRoleRequest>) -> Result<Response<Role>, Status> {
        admin(&req)?;
        let name = req.into_inner().name;
        name_of("name", &name)?;
        barrier(&self.node, false).await?;
        Ok(Response::new(role_to_proto(self.read_role(&name).await?)))
    }

    async fn delete_role(&self, req: Request<DeleteRoleRequest>) -> Result<Response<Role>, Status> {
        admin(&req)?;
        let name = req.into_inner().name;
        name_of("name", &name)?;
        barrier(&self.node, false).await?;
        let role = self.read_role(&name).await?;
        propose(&self.node, Command::DeleteRole { name }).await?;
        Ok(Response::new(role_to_proto(role)))
    }

    async fn create_token(&self, req: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        admin(&req)?;
        let req = req.into_inner();
        name_of("user", &req.user)?;
        if req.ttl_seconds > MAX_TTL_SECONDS {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: at most {MAX_TTL_SECONDS} (100 years)"
            )));
        }
        if req.description.len() > sec::MAX_DESCRIPTION {
            return Err(Status::invalid_argument(format!(
                "description: longer than {} bytes",
                sec::MAX_DESCRIPTION
            )));
        }
        let (id, secret) = sec::new_token_secret().map_err(Status::internal)?;
        let now = engine::now_ms();
        let token = TokenRecord {
            id: id.clone(),
            user: req.user,
            secret_sha256: sec::secret_hash(&secret),
            created_at_ms: now,
            expires_at_ms: (req.ttl_seconds > 0).then(|| now + (req.ttl_seconds as i64) * 1000),
            description: req.description,
        };
        propose(&self.node, Command::CreateToken { token: token.clone() }).await?;
        Ok(Response::new(CreateTokenResponse {
            token: Some(token_to_proto(token)),
            secret_token: sec::token_text(&id, &secret),
        }))
    }

    async fn list_tokens(&self, req: Request<ListTokensRequest>) -> Result<Response<ListTokensResponse>, Status> {
        admin(&req)?;
        let user = req.into_inner().user;
        if !user.is_empty() {
            name_of("user", &user)?;
        }
        barrier(&self.node, false).await?;
        let tokens = sec::list_tokens(&self.node.reader().view()).map_err(read_status)?;
        Ok(Response::new(ListTokensResponse {
            tokens: tokens
                .into_iter()
                .filter(|t| user.is_empty() || t.user == user)
                .map(token_to_proto)
                .collect(),
        }))
    }

    async fn get_token(&self, req: Request<GetTokenRequest>) -> Result<Response<Token>, Status> {
        admin(&req)?;
        let id = req.into_inner().id;
        sec::validate_token_id(&id).map_err(|e| Status::invalid_argument(e.replacen("token id", "id", 1)))?;
        barrier(&self.node, false).await?;
        Ok(Response::new(token_to_proto(self.read_token(&id).await?)))
    }

    async fn revoke_token(&self, req: Request<RevokeTokenRequest>) -> Result<Response<Token>, Status> {
        admin(&req)?;
        let id = req.into_inner().id;
        sec::validate_token_id(&id).map_err(|e| Status::invalid_argument(e.replacen("token id", "id", 1)))?;
        barrier(&self.node, false).await?;
        let token = self.read_token(&id).await?;
        propose(&self.node, Command::RevokeToken { id }).await?;
        Ok(Response::new(token_to_proto(token)))
    }

    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        let view = self.node.reader().view();
        let token = match &caller.token_id {
            Some(id) => sec::read_token(&view, id).map_err(read_status)?,
            None => None,
        };
        let user = sec::read_user(&view, &caller.principal).map_err(read_status)?;
        let roles = user.map(|u| u.roles).unwrap_or_default();
        let mut rules = Vec::new();
        for role in &roles {
            if let Some(r) = sec::read_role(&view, role).map_err(read_status)? {
                rules.extend(r.rules.iter().map(|r| r.to_string()));
            }
        }
        Ok(Response::new(WhoAmIResponse {
            user: caller.principal.clone(),
            token_id: caller.token_id.clone().unwrap_or_default(),
            roles,
            rules,
            expires_at: token.and_then(|t| t.expires_at_ms).map(time::timestamp),
        }))
    }
}
