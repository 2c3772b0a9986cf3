//! The clusters known to the root, with their last report, and their workers.

use super::views::{ClusterInfo, NewView, NodeView};
use super::{ApiResult, ApiState};
use crate::control::Caller;
use axum::Json;
use axum::extract::State;

/// Every registered cluster.
#[utoipa::path(get, path = "/api/clusters", tag = "clusters",
    responses((status = 200, body = Vec<ClusterInfo>)),
    security(("bearerAuth" = [])))]
pub async fn list_clusters(
    State(s): State<ApiState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<ClusterInfo>>> {
    let list = s.root.clusters(false).await;
    Ok(Json(list.iter().map(ClusterInfo::from).collect()))
}

/// Clusters that reported within the grace period.
#[utoipa::path(get, path = "/api/clusters/active", tag = "clusters",
    responses((status = 200, body = Vec<ClusterInfo>)),
    security(("bearerAuth" = [])))]
pub async fn list_active_clusters(
    State(s): State<ApiState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<ClusterInfo>>> {
    let list = s.root.clusters(true).await;
    Ok(Json(list.iter().map(ClusterInfo::from).collect()))
}

/// Every worker of every cluster, as the clusters last reported them.
#[utoipa::path(get, path = "/api/nodes", tag = "clusters",
    responses((status = 200, body = Vec<NodeView>)),
    security(("bearerAuth" = [])))]
pub async fn list_nodes(
    State(s): State<ApiState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<NodeView>>> {
    let list = s.root.nodes().await;
    Ok(Json(
        list.iter()
            .map(|n| NodeView::new(&n.cluster, &n.node))
            .collect(),
    ))
}
