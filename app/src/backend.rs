//! The port between the dashboard and the domain.
//!
//! `app` cannot depend on `server` (the server depends on `app`), so the dashboard's
//! server functions reach the domain through this trait. The server implements it once
//! and hands it to Leptos as context; its JSON API handlers call the very same
//! implementation, so each rule lives in one place.

use std::sync::Arc;

use uuid::Uuid;

use crate::error::AppError;
use crate::model::*;

pub type SharedBackend = Arc<dyn Backend>;

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    // --- sponsor accounts and sessions ---
    async fn register(&self, input: Registration, client: ClientMeta) -> Result<AuthResponse, AppError>;
    async fn login(&self, input: Credentials, client: ClientMeta) -> Result<AuthResponse, AppError>;
    async fn refresh(&self, refresh_token: &str, client: ClientMeta) -> Result<AuthResponse, AppError>;
    async fn logout(&self, sponsor: &SessionUser) -> Result<(), AppError>;
    async fn current_user(&self, sponsor: &SessionUser) -> Result<UserView, AppError>;
    /// `Set-Cookie` values that carry `tokens` to a browser, or clear them when `None`.
    fn session_cookies(&self, tokens: Option<&TokenPair>) -> Vec<String>;
    /// A `Set-Cookie` value with AEGIS's cookie attributes (HttpOnly, SameSite=Lax,
    /// Secure when served over TLS); `max_age` 0 deletes it.
    fn cookie(&self, name: &str, value: &str, path: &str, max_age: u64) -> String;

    // --- agents ---
    async fn list_agents(
        &self,
        sponsor: &SessionUser,
        page: PageRequest,
    ) -> Result<Page<AgentView>, AppError>;
    async fn create_agent(&self, sponsor: &SessionUser, input: NewAgent) -> Result<AgentCreated, AppError>;
    async fn get_agent(&self, sponsor: &SessionUser, id: Uuid) -> Result<AgentView, AppError>;
    async fn update_agent(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        patch: AgentPatch,
    ) -> Result<AgentView, AppError>;
    async fn rotate_agent_key(&self, sponsor: &SessionUser, id: Uuid) -> Result<KeyRotated, AppError>;
    async fn suspend_agent(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        reason: Option<String>,
    ) -> Result<AgentView, AppError>;
    async fn resume_agent(&self, sponsor: &SessionUser, id: Uuid) -> Result<AgentView, AppError>;
    async fn delete_agent(&self, sponsor: &SessionUser, id: Uuid) -> Result<AgentView, AppError>;
    async fn agent_trust(&self, sponsor: &SessionUser, id: Uuid) -> Result<TrustView, AppError>;
    async fn agent_wallet(&self, sponsor: &SessionUser, id: Uuid) -> Result<WalletView, AppError>;
    /// The MCP tools the agent sees through `/mcp`: every MCP connection's (its
    /// allow-list applied) that the agent's policy does not deny outright.
    async fn agent_tools(&self, sponsor: &SessionUser, id: Uuid) -> Result<Vec<AgentTool>, AppError>;
    /// The agent's holds, newest first: held (a metered call's ceiling) against settled.
    async fn agent_wallet_history(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        page: PageRequest,
    ) -> Result<Page<WalletEntry>, AppError>;
    /// What the sponsor's agents spent, by model, connection, agent and day.
    async fn usage(&self, sponsor: &SessionUser, query: UsageQuery) -> Result<UsageReport, AppError>;
    async fn update_agent_wallet(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        update: WalletUpdate,
    ) -> Result<WalletView, AppError>;

    // --- approvals ---
    async fn list_approvals(
        &self,
        sponsor: &SessionUser,
        query: ApprovalQuery,
    ) -> Result<Page<ApprovalView>, AppError>;
    async fn get_approval(&self, sponsor: &SessionUser, id: Uuid) -> Result<ApprovalView, AppError>;
    /// Approves and performs the parked request (exactly once); returns the
    /// approval with the outcome.
    async fn approve(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        input: ApproveRequest,
    ) -> Result<ApprovalView, AppError>;
    async fn reject(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        input: RejectRequest,
    ) -> Result<ApprovalView, AppError>;

    // --- audit ---
    async fn list_audit(
        &self,
        sponsor: &SessionUser,
        query: AuditQuery,
    ) -> Result<Page<AuditRecord>, AppError>;
    async fn verify_audit(&self, sponsor: &SessionUser) -> Result<ChainVerdict, AppError>;

    // --- policies ---
    async fn list_policies(&self, sponsor: &SessionUser) -> Result<Vec<PolicySummary>, AppError>;
    async fn get_policy(&self, sponsor: &SessionUser, id: Uuid) -> Result<PolicyView, AppError>;
    async fn create_policy(&self, sponsor: &SessionUser, input: NewPolicy) -> Result<PolicyView, AppError>;
    async fn update_policy(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        update: PolicyUpdate,
    ) -> Result<PolicyView, AppError>;

    // --- the vault ---
    async fn list_secrets(&self, sponsor: &SessionUser) -> Result<Vec<SecretView>, AppError>;
    async fn get_secret(&self, sponsor: &SessionUser, id: Uuid) -> Result<SecretView, AppError>;
    async fn create_secret(&self, sponsor: &SessionUser, input: NewSecret) -> Result<SecretView, AppError>;
    async fn update_secret(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        update: SecretUpdate,
    ) -> Result<SecretView, AppError>;
    /// Grants (`granted`) or revokes one agent's use of one secret, leaving the
    /// other grants as they are.
    async fn set_secret_grant(
        &self,
        sponsor: &SessionUser,
        secret: Uuid,
        agent: Uuid,
        granted: bool,
    ) -> Result<SecretView, AppError>;
    async fn delete_secret(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError>;

    // --- connections (gateway mode) ---
    async fn list_connections(&self, sponsor: &SessionUser) -> Result<Vec<ConnectionView>, AppError>;
    async fn create_connection(
        &self,
        sponsor: &SessionUser,
        input: NewConnection,
    ) -> Result<ConnectionView, AppError>;
    async fn replace_connection(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        input: NewConnection,
    ) -> Result<ConnectionView, AppError>;
    async fn patch_connection(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        patch: ConnectionPatch,
    ) -> Result<ConnectionView, AppError>;
    async fn delete_connection(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError>;
    /// The configured public origin (`AEGIS_PUBLIC_URL`), for URLs shown to sponsors.
    fn public_origin(&self) -> Option<String>;

    // --- policy playground, sessions and the overview ---
    /// Evaluates a policy for one of the sponsor's agents and a sample action without
    /// performing it: nothing is audited, reserved or spent.
    async fn evaluate_policy(
        &self,
        sponsor: &SessionUser,
        trial: PolicyTrial,
    ) -> Result<PolicyVerdict, AppError>;
    /// The sponsor's live sessions, most recently used first.
    async fn list_sessions(&self, sponsor: &SessionUser) -> Result<Vec<SessionView>, AppError>;
    /// Ends one of the sponsor's sessions (its refresh token stops working at once).
    async fn revoke_session(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError>;
    async fn dashboard_stats(
        &self,
        sponsor: &SessionUser,
        range: StatsRange,
    ) -> Result<DashboardStats, AppError>;

    // --- organizations: members and invitations ---
    /// Every organization the caller belongs to, with the caller's role in each.
    async fn list_orgs(&self, sponsor: &SessionUser) -> Result<Vec<OrgView>, AppError>;
    async fn list_members(&self, sponsor: &SessionUser) -> Result<Vec<MemberView>, AppError>;
    /// Owners only; the last owner cannot be demoted.
    async fn update_member(
        &self,
        sponsor: &SessionUser,
        member: Uuid,
        patch: MemberPatch,
    ) -> Result<MemberView, AppError>;
    /// Owners remove anyone; anyone may leave. The last owner cannot go.
    async fn remove_member(&self, sponsor: &SessionUser, member: Uuid) -> Result<(), AppError>;
    async fn invite(
        &self,
        sponsor: &SessionUser,
        input: NewInvitation,
    ) -> Result<InvitationCreated, AppError>;
    async fn list_invitations(&self, sponsor: &SessionUser) -> Result<Vec<InvitationView>, AppError>;
    async fn revoke_invitation(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError>;
    /// Joins the invitation's organization as the signed-in person (whose email it
    /// must be addressed to).
    async fn accept_invitation(&self, sponsor: &SessionUser, token: &str) -> Result<OrgView, AppError>;
    /// The organization's settings (the two-person rule); owners change them.
    async fn org_settings(&self, sponsor: &SessionUser) -> Result<OrgSettings, AppError>;
    async fn update_org_settings(
        &self,
        sponsor: &SessionUser,
        input: OrgSettings,
    ) -> Result<OrgSettings, AppError>;

    // --- notification channels ---
    async fn list_channels(&self, sponsor: &SessionUser) -> Result<Vec<ChannelView>, AppError>;
    /// Owners and admins; the signing secret is in the answer and nowhere else.
    async fn create_channel(
        &self,
        sponsor: &SessionUser,
        input: NewChannel,
    ) -> Result<ChannelCreated, AppError>;
    async fn update_channel(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        patch: ChannelPatch,
    ) -> Result<ChannelView, AppError>;
    async fn delete_channel(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError>;
    async fn channel_deliveries(&self, sponsor: &SessionUser, id: Uuid) -> Result<DeliveryPage, AppError>;
    /// Sends a `channel.test` event now, once; its delivery is in the log.
    async fn test_channel(&self, sponsor: &SessionUser, id: Uuid) -> Result<DeliveryView, AppError>;
    /// Links the Slack user a code was offered to with the signed-in member.
    async fn link_slack(&self, sponsor: &SessionUser, token: &str) -> Result<SlackLinked, AppError>;
}
