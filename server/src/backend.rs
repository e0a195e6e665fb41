//! The server's implementation of the dashboard port ([`app::backend::Backend`]).
//! The JSON API handlers call these same methods, so the dashboard and the API
//! share every rule.

use std::sync::Arc;

use app::backend::Backend;
use app::error::AppError;
use app::model::*;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::actor::Actor;
use crate::agents::AgentService;
use crate::approvals::ApprovalService;
use crate::audit::AuditLog;
use crate::auth::AuthService;
use crate::config::Config;
use crate::connections::ConnectionService;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::policies::PolicyService;
use crate::policies::engine::PolicyEngine;
use crate::proxy::Pipeline;
use crate::proxy::breaker::BreakerService;
use crate::proxy::breaker::windows::Resilient;
use crate::proxy::egress::EgressGuard;
use crate::proxy::upstream::Upstream;
use crate::secrets::SecretService;
use crate::secrets::vault::Vault;
use crate::store::{CallStore, GroupCommit};
use crate::trust::TrustService;
use crate::wallets::WalletService;

pub struct Services {
    pub config: Config,
    pub db: DatabaseConnection,
    pub auth: AuthService,
    pub agents: AgentService,
    pub policies: PolicyService,
    pub audit: AuditLog,
    pub secrets: SecretService,
    pub connections: ConnectionService,
    pub wallets: WalletService,
    pub proxy: Pipeline,
    pub events: EventBus,
    pub trust: TrustService,
    pub approvals: ApprovalService,
    pub metrics: Arc<Metrics>,
    /// What a call reads and writes on its own path ([`crate::store`]).
    pub store: Arc<dyn CallStore>,
    pub usage: crate::usage::UsageService,
    /// `/mcp`: the MCP gateway's domain side ([`crate::mcp`]).
    pub mcp: crate::mcp::McpGateway,
    /// Organizations, members, invitations ([`crate::orgs`]).
    pub orgs: crate::orgs::OrgService,
    /// Notification channels: signed webhooks and their outbox ([`crate::channels`]).
    pub channels: crate::channels::ChannelService,
}

impl Services {
    pub fn new(
        config: Config,
        db: DatabaseConnection,
        auth: AuthService,
        audit: AuditLog,
        vault: Vault,
        render: crate::proxy::Render,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        let audit = audit.with_metrics(metrics.clone());
        // The hot path's store: the backend's own (PostgreSQL, a SQLite file), else sea-orm.
        let store = crate::store::open(&db, &audit, metrics.clone(), config.portable_store);
        let policies = PolicyService::new(db.clone(), store.clone()).with_audit(audit.clone());
        let secrets = SecretService::new(db.clone(), vault.clone(), audit.clone());
        let egress = EgressGuard::new(config.egress.clone());
        let connections =
            ConnectionService::new(db.clone(), store.clone(), secrets.clone(), egress.clone(), audit.clone());
        // Redis pub/sub when REDIS_URL is set (its connection task starts here).
        let events = EventBus::from_config(config.redis_url.as_deref());
        let wallets = WalletService::new(db.clone(), store.clone(), events.clone(), config.reservation_ttl);
        let trust = TrustService::new(db.clone(), audit.clone(), events.clone());
        let approvals = ApprovalService::new(
            db.clone(),
            audit.clone(),
            events.clone(),
            vault.clone(),
            trust.clone(),
            config.approval_ttl,
        );
        let breaker = BreakerService::new(
            db.clone(),
            audit.clone(),
            events.clone(),
            trust.clone(),
            Arc::new(Resilient::new(config.redis_url.as_deref())),
            config.breaker.clone(),
            metrics.clone(),
        );
        let proxy = Pipeline {
            db: db.clone(),
            policies: policies.clone(),
            engine: {
                crate::policies::engine::set_process_memory_ceiling(config.policy_memory_ceiling);
                Arc::new(PolicyEngine::new())
            },
            upstream: Upstream::new(&egress, config.upstream.clone()),
            egress: egress.clone(),
            secrets: secrets.clone(),
            wallets: wallets.clone(),
            audit: audit.clone(),
            events: events.clone(),
            trust: trust.clone(),
            approvals: approvals.clone(),
            breaker,
            rates: crate::rate_limits::RateLimiter::from_config(config.redis_url.as_deref()),
            metrics: metrics.clone(),
            store: store.clone(),
            commit: GroupCommit::new(
                store.clone(),
                config.reservation_ttl,
                {
                    let wallets = wallets.clone();
                    Arc::new(move |resolved| {
                        let wallets = wallets.clone();
                        Box::pin(async move { wallets.announce(resolved).await })
                    })
                },
                metrics.clone(),
            ),
            in_flight: tokio_util::task::TaskTracker::new(),
            admission: Arc::new(tokio::sync::Semaphore::new(config.proxy_max_in_flight)),
            render,
        };
        let agents =
            AgentService::new(db.clone(), store.clone(), policies.clone(), audit.clone(), events.clone());
        let db_usage = db.clone();
        let mcp = crate::mcp::McpGateway::new(
            proxy.clone(),
            approvals.clone(),
            config.redis_url.as_deref(),
            config.mcp_approval_wait,
            config.approval_max_waits,
        );
        let orgs = crate::orgs::OrgService::new(
            db.clone(),
            audit.clone(),
            events.clone(),
            config.public_url.clone(),
            config.webhooks.mailer.clone(),
        );
        let channels = crate::channels::ChannelService::new(
            db.clone(),
            audit.clone(),
            vault.clone(),
            egress.clone(),
            events.clone(),
            config.webhooks.clone(),
        );
        Arc::new(Self {
            channels,
            orgs,
            mcp,
            config,
            db,
            auth,
            agents,
            policies,
            audit,
            secrets,
            connections,
            wallets,
            proxy,
            events,
            trust,
            approvals,
            metrics,
            store,
            usage: crate::usage::UsageService::new(db_usage),
        })
    }

    /// The member an access token stands for, acting in `org` (`X-AEGIS-Org`) or
    /// else their default organization: the session is live and the membership
    /// exists, or this fails (`401`, `404 org_not_found`).
    pub async fn sponsor_session(
        &self,
        access_token: &str,
        org: Option<Uuid>,
    ) -> Result<SessionUser, AppError> {
        let who = self.auth.authenticate(access_token).await?;
        self.orgs.session(who, org).await
    }

    /// Refresh for a browser's cookie: parallel requests share a rotation in
    /// progress; a token replayed after its rotation is reuse (see
    /// [`AuthService::refresh_shared`]).
    pub async fn refresh_browser_session(
        &self,
        token: &str,
        client: &ClientMeta,
    ) -> Result<AuthResponse, AppError> {
        self.auth.refresh_shared(token, client).await
    }

    /// Retention of stored answers: idempotency records older than
    /// [`crate::approvals::answer::IDEMPOTENCY_RETENTION`], and the bodies of approval
    /// outcomes past theirs. Bounded work per call; returns how many rows changed.
    pub async fn prune_stored_answers(&self) -> Result<u64, AppError> {
        let retention = crate::approvals::answer::IDEMPOTENCY_RETENTION;
        let pruned = crate::proxy::idempotency::prune(&self.db, retention).await?;
        Ok(pruned + self.approvals.prune_outcomes().await?)
    }
}

#[async_trait::async_trait]
impl Backend for Services {
    async fn register(&self, input: Registration, client: ClientMeta) -> Result<AuthResponse, AppError> {
        self.auth.register(input, client).await
    }

    async fn login(&self, input: Credentials, client: ClientMeta) -> Result<AuthResponse, AppError> {
        self.auth.login(input, client).await
    }

    async fn refresh(&self, refresh_token: &str, client: ClientMeta) -> Result<AuthResponse, AppError> {
        self.auth.refresh(refresh_token, &client).await
    }

    async fn logout(&self, sponsor: &SessionUser) -> Result<(), AppError> {
        self.auth.logout(sponsor).await
    }

    async fn current_user(&self, sponsor: &SessionUser) -> Result<UserView, AppError> {
        self.auth.user(sponsor).await
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: u64) -> String {
        crate::auth::cookies::set_cookie(&self.config, name, value, path, max_age)
    }

    fn session_cookies(&self, tokens: Option<&TokenPair>) -> Vec<String> {
        crate::auth::cookies::session_cookies(&self.config, tokens)
    }

    async fn list_agents(
        &self,
        sponsor: &SessionUser,
        page: PageRequest,
    ) -> Result<Page<AgentView>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.agents.list(org, page).await
    }

    async fn create_agent(&self, sponsor: &SessionUser, input: NewAgent) -> Result<AgentCreated, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.agents.create(&by, input).await
    }

    async fn get_agent(&self, sponsor: &SessionUser, id: Uuid) -> Result<AgentView, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.agents.get(org, id).await
    }

    async fn update_agent(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        patch: AgentPatch,
    ) -> Result<AgentView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.agents.update(&by, id, patch).await
    }

    async fn rotate_agent_key(&self, sponsor: &SessionUser, id: Uuid) -> Result<KeyRotated, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.agents.rotate_key(&by, id).await
    }

    async fn suspend_agent(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        reason: Option<String>,
    ) -> Result<AgentView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.agents.suspend(&by, id, reason).await
    }

    async fn resume_agent(&self, sponsor: &SessionUser, id: Uuid) -> Result<AgentView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.agents.resume(&by, id).await
    }

    async fn delete_agent(&self, sponsor: &SessionUser, id: Uuid) -> Result<AgentView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.agents.delete(&by, id).await
    }

    async fn agent_trust(&self, sponsor: &SessionUser, id: Uuid) -> Result<TrustView, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.trust.view(org, id).await
    }

    async fn agent_wallet(&self, sponsor: &SessionUser, id: Uuid) -> Result<WalletView, AppError> {
        let org = sponsor.scope(Access::Read)?;
        // Ownership first: another sponsor's agent is "not found".
        self.agents.get(org, id).await?;
        self.wallets.view(id).await
    }

    /// Listed as `/mcp` lists them for the agent (each MCP server's `tools/list` is a
    /// call through the pipeline under the agent, cached per connection).
    async fn agent_tools(&self, sponsor: &SessionUser, id: Uuid) -> Result<Vec<AgentTool>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        // Ownership first: another sponsor's agent is "not found".
        let agent = self.agents.owned(org, id).await?;
        let principal = crate::agents::AgentPrincipal { agent, key_id: String::new() };
        let tools = self.mcp.list_tools(&principal).await?;
        Ok(tools
            .iter()
            .filter_map(|t| {
                Some(AgentTool {
                    name: t.get("name")?.as_str()?.to_owned(),
                    description: t.get("description").and_then(|d| d.as_str()).map(str::to_owned),
                })
            })
            .collect())
    }

    async fn agent_wallet_history(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        page: PageRequest,
    ) -> Result<Page<WalletEntry>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.agents.get(org, id).await?;
        self.wallets.history(id, page).await
    }

    async fn usage(&self, sponsor: &SessionUser, query: UsageQuery) -> Result<UsageReport, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.usage.report(org, &query).await
    }

    /// Limits are agent settings: the same validation and audit record as `PATCH`.
    async fn update_agent_wallet(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        update: WalletUpdate,
    ) -> Result<WalletView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.agents.update_wallet(&by, id, update).await?;
        self.wallets.view(id).await
    }

    async fn list_approvals(
        &self,
        sponsor: &SessionUser,
        query: ApprovalQuery,
    ) -> Result<Page<ApprovalView>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.approvals.list(org, query).await
    }

    async fn get_approval(&self, sponsor: &SessionUser, id: Uuid) -> Result<ApprovalView, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.approvals.get(org, id).await
    }

    async fn approve(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        input: ApproveRequest,
    ) -> Result<ApprovalView, AppError> {
        let by = Actor::new(sponsor, Access::Decide)?;
        self.proxy.approve_and_perform(&self.agents, &by, id, input).await?;
        self.approvals.get(by.org, id).await
    }

    async fn reject(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        input: RejectRequest,
    ) -> Result<ApprovalView, AppError> {
        self.approvals.reject(&Actor::new(sponsor, Access::Decide)?, id, input).await
    }

    async fn list_audit(
        &self,
        sponsor: &SessionUser,
        query: AuditQuery,
    ) -> Result<Page<AuditRecord>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        let (filter, limit) = crate::audit::query::parse_query(&query, org)?;
        self.audit.list(&filter, limit).await
    }

    async fn verify_audit(&self, sponsor: &SessionUser) -> Result<ChainVerdict, AppError> {
        let org = sponsor.scope(Access::Read)?;
        // The sponsor's own records only, bounded and rate-limited (issue #16, item 9).
        let report = self.audit.verify_for_sponsor(org).await?;
        Ok(ChainVerdict {
            valid: report.valid,
            checked: report.checked,
            first_bad_seq: report.first_bad_seq,
            reason: report.reason,
        })
    }

    async fn list_policies(&self, sponsor: &SessionUser) -> Result<Vec<PolicySummary>, AppError> {
        self.policies.list(sponsor.scope(Access::Read)?).await
    }

    async fn get_policy(&self, sponsor: &SessionUser, id: Uuid) -> Result<PolicyView, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.policies.get(org, id).await
    }

    async fn create_policy(&self, sponsor: &SessionUser, input: NewPolicy) -> Result<PolicyView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.policies.create(&by, input).await
    }

    async fn update_policy(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        update: PolicyUpdate,
    ) -> Result<PolicyView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.policies.update(&by, id, update).await
    }

    async fn list_secrets(&self, sponsor: &SessionUser) -> Result<Vec<SecretView>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.secrets.list(org).await
    }

    async fn get_secret(&self, sponsor: &SessionUser, id: Uuid) -> Result<SecretView, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.secrets.get(org, id).await
    }

    async fn create_secret(&self, sponsor: &SessionUser, input: NewSecret) -> Result<SecretView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.secrets.create(&by, input).await
    }

    async fn update_secret(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        update: SecretUpdate,
    ) -> Result<SecretView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.secrets.update(&by, id, update).await
    }

    async fn set_secret_grant(
        &self,
        sponsor: &SessionUser,
        secret: Uuid,
        agent: Uuid,
        granted: bool,
    ) -> Result<SecretView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.secrets.set_grant(&by, secret, agent, granted).await
    }

    async fn delete_secret(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.secrets.delete(&by, id).await
    }

    async fn list_connections(&self, sponsor: &SessionUser) -> Result<Vec<ConnectionView>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        self.connections.list(org).await
    }

    async fn create_connection(
        &self,
        sponsor: &SessionUser,
        input: NewConnection,
    ) -> Result<ConnectionView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.connections.create(&by, input).await
    }

    async fn replace_connection(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        input: NewConnection,
    ) -> Result<ConnectionView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.connections.replace(&by, id, input).await
    }

    async fn patch_connection(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        patch: ConnectionPatch,
    ) -> Result<ConnectionView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.connections.patch(&by, id, patch).await
    }

    async fn delete_connection(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        self.connections.delete(&by, id).await
    }

    fn public_origin(&self) -> Option<String> {
        self.config.public_url.clone()
    }

    async fn evaluate_policy(
        &self,
        sponsor: &SessionUser,
        trial: PolicyTrial,
    ) -> Result<PolicyVerdict, AppError> {
        let org = sponsor.scope(Access::Write)?;
        // Ownership first: another sponsor's agent is "not found".
        let agent = self.agents.owned(org, trial.agent_id).await?;
        if trial.mcp.is_some() {
            return crate::playground::dry_run_mcp(
                &self.proxy,
                &agent,
                trial,
                self.config.proxy_max_body_bytes,
            )
            .await;
        }
        self.proxy.dry_run_policy(&agent, trial, self.config.proxy_max_body_bytes).await
    }

    async fn list_sessions(&self, sponsor: &SessionUser) -> Result<Vec<SessionView>, AppError> {
        self.auth.sessions(sponsor).await
    }

    async fn revoke_session(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError> {
        self.auth.revoke_session(sponsor, id).await
    }

    async fn dashboard_stats(
        &self,
        sponsor: &SessionUser,
        range: StatsRange,
    ) -> Result<DashboardStats, AppError> {
        let org = sponsor.scope(Access::Read)?;
        crate::overview::stats(&self.db, &self.audit, org, range, crate::db::now()).await
    }

    async fn list_orgs(&self, sponsor: &SessionUser) -> Result<Vec<OrgView>, AppError> {
        self.orgs.list_mine(sponsor.user_id).await
    }

    async fn list_members(&self, sponsor: &SessionUser) -> Result<Vec<MemberView>, AppError> {
        self.orgs.members(sponsor).await
    }

    async fn update_member(
        &self,
        sponsor: &SessionUser,
        member: Uuid,
        patch: MemberPatch,
    ) -> Result<MemberView, AppError> {
        self.orgs.set_role(sponsor, member, patch).await
    }

    async fn remove_member(&self, sponsor: &SessionUser, member: Uuid) -> Result<(), AppError> {
        self.orgs.remove(sponsor, member).await
    }

    async fn invite(
        &self,
        sponsor: &SessionUser,
        input: NewInvitation,
    ) -> Result<InvitationCreated, AppError> {
        self.orgs.invite(sponsor, input).await
    }

    async fn list_invitations(&self, sponsor: &SessionUser) -> Result<Vec<InvitationView>, AppError> {
        self.orgs.invitations(sponsor).await
    }

    async fn revoke_invitation(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError> {
        self.orgs.revoke_invitation(sponsor, id).await
    }

    async fn accept_invitation(&self, sponsor: &SessionUser, token: &str) -> Result<OrgView, AppError> {
        self.orgs.accept(sponsor, token).await
    }

    async fn org_settings(&self, sponsor: &SessionUser) -> Result<OrgSettings, AppError> {
        self.orgs.settings(sponsor).await
    }

    async fn update_org_settings(
        &self,
        sponsor: &SessionUser,
        input: OrgSettings,
    ) -> Result<OrgSettings, AppError> {
        self.orgs.update_settings(sponsor, input).await
    }

    async fn list_channels(&self, sponsor: &SessionUser) -> Result<Vec<ChannelView>, AppError> {
        self.channels.list(sponsor).await
    }

    async fn create_channel(
        &self,
        sponsor: &SessionUser,
        input: NewChannel,
    ) -> Result<ChannelCreated, AppError> {
        self.channels.create(sponsor, input).await
    }

    async fn update_channel(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        patch: ChannelPatch,
    ) -> Result<ChannelView, AppError> {
        self.channels.update(sponsor, id, patch).await
    }

    async fn delete_channel(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError> {
        self.channels.delete(sponsor, id).await
    }

    async fn channel_deliveries(&self, sponsor: &SessionUser, id: Uuid) -> Result<DeliveryPage, AppError> {
        self.channels.deliveries(sponsor, id).await
    }

    async fn test_channel(&self, sponsor: &SessionUser, id: Uuid) -> Result<DeliveryView, AppError> {
        self.channels.test(sponsor, id).await
    }

    async fn link_slack(&self, sponsor: &SessionUser, token: &str) -> Result<SlackLinked, AppError> {
        self.channels.slack_link(sponsor, token).await
    }
}

impl Services {
    /// A click in a Slack message ([`crate::channels::slack_clicks`]): verified and
    /// read by the channel, then decided through the same `approve` / `reject` as
    /// the dashboard, as the linked member with their role now. Slack wants an
    /// answer within 3 s: the decision (and the call an approval performs) goes on
    /// after the answer if it takes longer; the message is updated when it is done,
    /// and a refusal (a viewer's role, already decided) is told to that Slack user.
    pub async fn slack_interaction(
        self: &Arc<Self>,
        channel: Uuid,
        req: crate::channels::slack_clicks::SlackRequest<'_>,
    ) -> Result<(), AppError> {
        use crate::channels::slack_clicks::Click;
        let Click::Decide { member, approval, approve, channel, slack_user } =
            self.channels.slack_click(channel, req).await?
        else {
            return Ok(());
        };
        let this = self.clone();
        let decide = tokio::spawn(async move {
            let decided = if approve {
                let input = ApproveRequest { reason: Some("approved in Slack".into()), grant: None };
                this.approve(&member, approval, input).await.map(|_| ())
            } else {
                let input = RejectRequest { reason: Some("rejected in Slack".into()) };
                this.reject(&member, approval, input).await.map(|_| ())
            };
            match decided {
                Ok(()) => this.channels.slack_refresh(&channel, approval).await,
                Err(e) => this.channels.slack_tell(&channel, &slack_user, &e.message).await,
            }
        });
        let _ = tokio::time::timeout(std::time::Duration::from_millis(2500), decide).await;
        Ok(())
    }
}
