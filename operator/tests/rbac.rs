//! `operator/rbac.yaml` is enough: the controllers and the leader Lease run as a
//! ServiceAccount bound to that ClusterRole and nothing else (the API server authorizes with
//! RBAC), through the whole region/probe cycle.

mod common;

use anyhow::{Context, Result};
use common::{EVERY, Operator, WAIT, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, unique_name, wait_for};
use fiberstack_operator::crd::{FiberProbe, FiberRegion};
use fiberstack_operator::lease::{LeaderLease, LeaseConfig};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;

/// A client that authenticates as `namespace/name`.
async fn client_as(env: &LocalEnv, admin: &Client, namespace: &str, name: &str) -> Result<Client> {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .context("no token in the TokenRequest")?
        .token;
    let kubeconfig = Kubeconfig::read_from(&env.kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info = AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Ok(Client::try_from(config)?)
}

#[tokio::test]
async fn the_cluster_role_in_rbac_yaml_is_enough() -> Result<()> {
    let env = LocalEnv::load()?;
    let admin = env.kube().await?;
    common::install_crds(&admin).await?;
    let ns = TestNamespace::create(&admin, "op-rbac").await?;

    let mut role: ClusterRole = serde_yaml::from_str(include_str!("../rbac.yaml"))?;
    let role_name = unique_name("fiberstack-operator-test");
    role.metadata.name = Some(role_name.clone());
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles.create(&PostParams::default(), &role).await?;
    let sa: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": "operator" } }))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    bindings
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: kube::api::ObjectMeta {
                    name: Some(role_name.clone()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".to_owned(),
                    kind: "ClusterRole".to_owned(),
                    name: role_name.clone(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".to_owned(),
                    name: "operator".to_owned(),
                    namespace: Some(ns.name.clone()),
                    ..Default::default()
                }]),
            },
        )
        .await?;

    let result = async {
        let restricted = client_as(&env, &admin, &ns.name, "operator").await?;
        // Sanity: the ServiceAccount cannot do what the role does not grant.
        let forbidden = Api::<k8s_openapi::api::core::v1::Node>::all(restricted.clone())
            .list(&Default::default())
            .await;
        assert!(
            forbidden.is_err(),
            "the ServiceAccount may list nodes: RBAC is not in force"
        );

        let lease = LeaderLease::new(
            restricted.clone(),
            LeaseConfig {
                name: "fiberstack-operator".to_owned(),
                namespace: ns.name.clone(),
                identity: "rbac-test".to_owned(),
                duration: std::time::Duration::from_secs(5),
                renew_every: std::time::Duration::from_secs(1),
            },
        );
        tokio::time::timeout(std::time::Duration::from_secs(20), lease.acquire())
            .await
            .context("the lease was not acquired with the role's permissions")?;

        let operator = Operator::start(&restricted, &ns.name, None);
        let outcome = async {
            let regions: Api<FiberRegion> = Api::namespaced(admin.clone(), &ns.name);
            let probes: Api<FiberProbe> = Api::namespaced(admin.clone(), &ns.name);
            apply_json(&regions, &common::region_json("ghana")).await?;
            apply_json(&probes, &common::probe_json("accra-edge", "ghana")).await?;
            wait_for("region status", WAIT, EVERY, || async {
                let r = regions.get("ghana").await?;
                let s = r.status.unwrap_or_default();
                Ok(if s.token_secret.is_some() {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                })
            })
            .await?;
            wait_for("probe placed and status written", WAIT, EVERY, || async {
                let p = probes.get("accra-edge").await?;
                let ready = p.status.map(|s| s.ready).unwrap_or_default();
                Ok(if ready == "1/1" { Ok(()) } else { Err(ready) })
            })
            .await?;
            let mut paused = common::probe_json("accra-edge", "ghana");
            paused["spec"]["paused"] = json!(true);
            apply_json(&probes, &paused).await?;
            let daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), &ns.name);
            wait_for("DaemonSet deleted", WAIT, EVERY, || async {
                let present = daemonsets
                    .get_opt("fiberstack-probe-accra-edge")
                    .await?
                    .is_some();
                Ok(if present {
                    Err("present".to_owned())
                } else {
                    Ok(())
                })
            })
            .await
        }
        .await;
        operator.stop().await;
        lease.release().await;
        outcome
    }
    .await;

    let _ = bindings.delete(&role_name, &DeleteParams::default()).await;
    let _ = roles.delete(&role_name, &DeleteParams::default()).await;
    ns.delete().await?;
    result
}
