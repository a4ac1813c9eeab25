select customer_id, group_concat(distinct product_name order by product_name separator ', ') as products
from order_items
group by customer_id
having count(*)>2
